//! Trunk host resolution (RFC 3263 §4): NAPTR, then SRV for the transport, then
//! A/AAAA, into an ordered list of targets to try. The order rules are pure
//! ([`select`]); this module does the look-ups with hickory-resolver, whose cache
//! honours each record's TTL, so resolving per call follows a carrier's DNS changes
//! without a restart and costs no query while the records are fresh.

pub mod select;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{SipTarget, Transport};
use select::{NaptrRecord, SrvRecord, Step};

/// One place to send a request: an address, the transport, and the record it came
/// from (for `trunk check`, `/v1/trunks` and the logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub addr: SocketAddr,
    pub transport: Transport,
    /// How we got here, e.g. `SRV _sip._udp.carrier.example 10 60 5060 sip1.carrier.example`.
    pub record: String,
}

impl DnsTarget {
    pub fn transport_name(&self) -> &'static str {
        transport_name(self.transport)
    }
}

impl fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {}/{}",
            self.record,
            self.addr,
            self.transport_name()
        )
    }
}

pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
    }
}

/// The targets of one trunk URI, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub targets: Vec<DnsTarget>,
    /// The shortest time any record used is still valid; `None` for an IP literal.
    pub ttl: Option<Duration>,
}

/// Each trunk's latest resolution, by trunk name (written per call and by the
/// registration follower, read by the trunk board).
pub type DnsStatusMap = Arc<std::sync::Mutex<std::collections::HashMap<String, DnsStatus>>>;

/// A trunk's latest resolution: its targets in order, or why there are none.
pub type DnsStatus = Result<Resolution, DnsError>;

/// Why a trunk host gave no target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS: {name} has no NAPTR, SRV, A or AAAA record")]
    NoRecords { name: String },
    #[error("DNS: cannot resolve {name}: {error}")]
    Lookup { name: String, error: String },
    #[error("DNS: no resolver ({0})")]
    NoResolver(String),
    #[error("{name} resolves only to {found}, which sip.listen {listen} cannot reach")]
    Unreachable {
        name: String,
        found: String,
        listen: IpAddr,
    },
}

impl Resolution {
    /// Keeps the targets a SIP socket bound to `listen` can send to (an IPv4 listener
    /// skips IPv6 addresses and the other way round); none left is an error naming
    /// what was found.
    pub fn reachable_from(mut self, name: &str, listen: IpAddr) -> Result<Resolution, DnsError> {
        let found: Vec<String> = self.targets.iter().map(|t| t.addr.to_string()).collect();
        self.targets
            .retain(|t| select::reachable_from(listen, t.addr.ip()));
        if self.targets.is_empty() {
            return Err(DnsError::Unreachable {
                name: name.to_string(),
                found: found.join(", "),
                listen,
            });
        }
        Ok(self)
    }
}

/// The resolver trunk names go through: `[sip] dns_servers`, or the system's.
/// Cheap to clone (one shared cache).
#[derive(Clone)]
pub struct SipResolver {
    inner: Result<Arc<TokioResolver>, String>,
}

impl fmt::Debug for SipResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SipResolver")
            .field("ready", &self.inner.is_ok())
            .finish()
    }
}

/// A look-up's records and how long they are valid.
struct Found<T> {
    records: Vec<T>,
    valid_until: Option<Instant>,
}

impl<T> Found<T> {
    fn none() -> Self {
        Found {
            records: Vec::new(),
            valid_until: None,
        }
    }
}

impl SipResolver {
    /// Queries `servers` (UDP, then TCP for truncated answers); none = the system's
    /// resolvers from `/etc/resolv.conf`. A system without one still resolves IP
    /// literals; names then fail with the reason.
    pub fn new(servers: &[SocketAddr]) -> SipResolver {
        let provider = TokioConnectionProvider::default();
        let builder = if servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| format!("system resolver: {e}"))
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                provider,
            );
            let mut opts = ResolverOpts::default();
            // Per call, a dead resolver must not hold a call for long.
            opts.timeout = Duration::from_secs(2);
            opts.attempts = 1;
            *b.options_mut() = opts;
            Ok(b)
        };
        SipResolver {
            inner: builder.map(|b| Arc::new(b.build())),
        }
    }

    /// The system's resolver (no `dns_servers`).
    pub fn system() -> SipResolver {
        Self::new(&[])
    }

    /// The resolver `[sip] dns_servers` names (checked at load; an entry that is not
    /// IP:port makes every name fail with the key in the error).
    pub fn from_settings(sip: &crate::config::SipSettings) -> SipResolver {
        match sip.dns_server_addrs() {
            Ok(servers) => Self::new(&servers),
            Err((key, message)) => SipResolver {
                inner: Err(format!("config key `{key}`: {message}")),
            },
        }
    }

    /// RFC 3263 §4: the targets for `target`, in the order to try them.
    pub async fn resolve(&self, target: &SipTarget) -> Result<Resolution, DnsError> {
        let mut acc = Accumulator::default();
        let (name, fallback) = match select::first_step(target) {
            Step::Literal(addr, transport) => {
                return Ok(Resolution {
                    targets: vec![DnsTarget {
                        addr,
                        transport,
                        record: "IP address".into(),
                    }],
                    ttl: None,
                })
            }
            Step::Host {
                name,
                port,
                transport,
            } => {
                self.add_host(&mut acc, &name, port, transport, None).await;
                return acc.finish(&name);
            }
            Step::Srv { name, transport } => {
                let srv = select::srv_name(transport, &name);
                self.add_srv(&mut acc, &srv, transport, String::new()).await;
                (name, transport)
            }
            Step::Naptr { name } => {
                self.add_naptr(&mut acc, &name).await;
                if acc.targets.is_empty() {
                    for t in select::SUPPORTED {
                        let srv = select::srv_name(t, &name);
                        self.add_srv(&mut acc, &srv, t, String::new()).await;
                    }
                }
                (name, Transport::Udp)
            }
        };
        if acc.targets.is_empty() {
            let port = SipTarget::default_port(fallback);
            self.add_host(&mut acc, &name, port, fallback, None).await;
        }
        acc.finish(&name)
    }

    fn resolver(&self) -> Result<&TokioResolver, DnsError> {
        self.inner
            .as_deref()
            .map_err(|e| DnsError::NoResolver(e.clone()))
    }

    async fn add_naptr(&self, acc: &mut Accumulator, name: &str) {
        let found = match self.naptr(name).await {
            Ok(f) => f,
            Err(e) => return acc.failed(e),
        };
        acc.valid(found.valid_until);
        for (transport, r) in select::naptr_srv_names(&found.records) {
            let via = format!("NAPTR {} {} {} -> ", r.order, r.preference, r.service);
            self.add_srv(acc, &r.replacement, transport, via).await;
        }
    }

    async fn add_srv(&self, acc: &mut Accumulator, srv: &str, transport: Transport, via: String) {
        let found = match self.srv(srv).await {
            Ok(f) => f,
            Err(e) => return acc.failed(e),
        };
        acc.valid(found.valid_until);
        let ordered = select::order_srv(&found.records, &mut |max| {
            rand::Rng::random_range(&mut rand::rng(), 0..=max)
        });
        for r in ordered {
            let record = format!(
                "{via}SRV {srv} {} {} {} {}",
                r.priority, r.weight, r.port, r.target
            );
            self.add_host(acc, &r.target, r.port, transport, Some(record))
                .await;
        }
    }

    async fn add_host(
        &self,
        acc: &mut Accumulator,
        name: &str,
        port: u16,
        transport: Transport,
        via: Option<String>,
    ) {
        let found = match self.addresses(name).await {
            Ok(f) => f,
            Err(e) => return acc.failed(e),
        };
        acc.valid(found.valid_until);
        for ip in found.records {
            let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
            let record = match &via {
                None => format!("{kind} {name}"),
                Some(v) => format!("{v} ({kind})"),
            };
            acc.push(DnsTarget {
                addr: SocketAddr::new(ip, port),
                transport,
                record,
            });
        }
    }

    async fn naptr(&self, name: &str) -> Result<Found<NaptrRecord>, DnsError> {
        let lookup = match self.resolver()?.lookup(fqdn(name), RecordType::NAPTR).await {
            Ok(l) => l,
            Err(e) => return empty_or(e, name),
        };
        let records = lookup
            .iter()
            .filter_map(|d| match d {
                RData::NAPTR(n) => Some(NaptrRecord {
                    order: n.order(),
                    preference: n.preference(),
                    flags: String::from_utf8_lossy(n.flags()).into_owned(),
                    service: String::from_utf8_lossy(n.services()).into_owned(),
                    replacement: bare(&n.replacement().to_utf8()),
                }),
                _ => None,
            })
            .collect();
        Ok(Found {
            records,
            valid_until: Some(lookup.valid_until()),
        })
    }

    async fn srv(&self, name: &str) -> Result<Found<SrvRecord>, DnsError> {
        let lookup = match self.resolver()?.srv_lookup(fqdn(name)).await {
            Ok(l) => l,
            Err(e) => return empty_or(e, name),
        };
        let records = lookup
            .iter()
            .map(|s| SrvRecord {
                priority: s.priority(),
                weight: s.weight(),
                port: s.port(),
                target: bare(&s.target().to_utf8()),
            })
            .collect();
        Ok(Found {
            records,
            valid_until: Some(lookup.as_lookup().valid_until()),
        })
    }

    async fn addresses(&self, name: &str) -> Result<Found<IpAddr>, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Found {
                records: vec![ip],
                valid_until: None,
            });
        }
        let resolver = self.resolver()?;
        let (v4, v6) = tokio::join!(
            resolver.ipv4_lookup(fqdn(name)),
            resolver.ipv6_lookup(fqdn(name))
        );
        let mut found = Found::none();
        let mut error = None;
        match v4 {
            Ok(l) => {
                found.records.extend(l.iter().map(|a| IpAddr::V4(a.0)));
                found.valid_until = Some(l.valid_until());
            }
            Err(e) => error = empty_or::<()>(e, name).err(),
        }
        match v6 {
            Ok(l) => {
                found.records.extend(l.iter().map(|a| IpAddr::V6(a.0)));
                let until = l.valid_until();
                found.valid_until = Some(found.valid_until.map_or(until, |u| u.min(until)));
            }
            Err(e) => error = error.or(empty_or::<()>(e, name).err()),
        }
        match error {
            Some(e) if found.records.is_empty() => Err(e),
            _ => {
                found.records = select::stable_addresses(found.records);
                Ok(found)
            }
        }
    }
}

/// Absolute, so that no search domain is tried first.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn bare(name: &str) -> String {
    let n = name.trim_end_matches('.');
    if n.is_empty() {
        ".".into()
    } else {
        n.to_ascii_lowercase()
    }
}

/// No such name or no record of that type: nothing found, the next step runs. Any
/// other failure (timeout, refused) is an error that names the resolver's reason.
fn empty_or<T>(e: ResolveError, name: &str) -> Result<Found<T>, DnsError> {
    if e.is_no_records_found() || e.is_nx_domain() {
        Ok(Found::none())
    } else {
        Err(DnsError::Lookup {
            name: name.to_string(),
            error: e.to_string(),
        })
    }
}

/// Targets found so far (each address once), their validity, and the first error.
#[derive(Default)]
struct Accumulator {
    targets: Vec<DnsTarget>,
    valid_until: Option<Instant>,
    error: Option<DnsError>,
}

impl Accumulator {
    fn valid(&mut self, until: Option<Instant>) {
        if let Some(u) = until {
            self.valid_until = Some(self.valid_until.map_or(u, |v| v.min(u)));
        }
    }

    fn failed(&mut self, e: DnsError) {
        self.error.get_or_insert(e);
    }

    fn push(&mut self, t: DnsTarget) {
        let seen = self
            .targets
            .iter()
            .any(|o| o.addr == t.addr && o.transport == t.transport);
        if !seen {
            self.targets.push(t);
        }
    }

    /// The targets; with none, the first look-up error, else "no records".
    fn finish(self, name: &str) -> Result<Resolution, DnsError> {
        if self.targets.is_empty() {
            return Err(self.error.unwrap_or_else(|| DnsError::NoRecords {
                name: name.to_string(),
            }));
        }
        let now = Instant::now();
        Ok(Resolution {
            targets: self.targets,
            ttl: self.valid_until.map(|u| u.saturating_duration_since(now)),
        })
    }
}
