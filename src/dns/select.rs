//! RFC 3263 §4 target selection, the pure part: which look-ups a trunk URI calls for,
//! which NAPTR services we use and in what order, and the RFC 2782 ordering of SRV
//! records (priority, then weighted random with the randomness passed in).

use std::net::{IpAddr, SocketAddr};

use crate::config::{SipTarget, Transport};

/// The transports we speak, in the order we prefer them when the DNS leaves the
/// choice to us (no NAPTR, no `transport=` parameter).
pub const SUPPORTED: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// The first step of resolving a trunk URI (RFC 3263 §4.1, §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An IP address: no DNS at all.
    Literal(SocketAddr, Transport),
    /// A name with an explicit port: its A/AAAA records, that port.
    Host {
        name: String,
        port: u16,
        transport: Transport,
    },
    /// A name with `transport=` but no port: SRV for that transport, then A/AAAA.
    Srv { name: String, transport: Transport },
    /// A bare name: NAPTR, else SRV for each transport we support, else A/AAAA.
    Naptr { name: String },
}

/// Where resolving `target` starts.
pub fn first_step(target: &SipTarget) -> Step {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Step::Literal(SocketAddr::new(ip, target.port), target.transport);
    }
    let name = target.host.trim_end_matches('.').to_ascii_lowercase();
    if target.explicit_port {
        Step::Host {
            name,
            port: target.port,
            transport: target.transport,
        }
    } else if target.explicit_transport {
        Step::Srv {
            name,
            transport: target.transport,
        }
    } else {
        Step::Naptr { name }
    }
}

/// The SRV owner name for `transport` at `domain` (`_sip._udp.example.com`; TLS is
/// `_sips._tcp`, RFC 3263 §4.1).
pub fn srv_name(transport: Transport, domain: &str) -> String {
    let service = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
    };
    format!("{service}.{domain}")
}

/// The transport a NAPTR service field names, when it is one we support.
pub fn naptr_transport(service: &str) -> Option<Transport> {
    match service.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(Transport::Udp),
        "SIP+D2T" => Some(Transport::Tcp),
        "SIPS+D2T" => Some(Transport::Tls),
        _ => None,
    }
}

/// One NAPTR record as the DNS gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaptrRecord {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub service: String,
    /// The SRV name to look up next (`_sip._udp.example.com`).
    pub replacement: String,
}

/// The SRV look-ups the NAPTR records lead to, by `order` then `preference`:
/// only terminal `S` records with a service we support (RFC 3263 §4.1).
pub fn naptr_srv_names(records: &[NaptrRecord]) -> Vec<(Transport, NaptrRecord)> {
    let mut usable: Vec<(Transport, NaptrRecord)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter(|r| !r.replacement.is_empty() && r.replacement != ".")
        .filter_map(|r| naptr_transport(&r.service).map(|t| (t, r.clone())))
        .collect();
    // A stable sort keeps the DNS order among equals.
    usable.sort_by_key(|(_, r)| (r.order, r.preference));
    usable
}

/// One SRV record as the DNS gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The host to look up (`sip1.example.com`); `.` means "no service here".
    pub target: String,
}

/// SRV records in the order to try them (RFC 2782): priority ascending; within one
/// priority, repeatedly a weighted random pick among those left. `pick(n)` returns a
/// uniformly random number in `0..=n`. A target of `.` (the service is decidedly not
/// available) is dropped.
pub fn order_srv(records: &[SrvRecord], pick: &mut impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    let mut records: Vec<SrvRecord> = records
        .iter()
        .filter(|r| !r.target.is_empty() && r.target != ".")
        .cloned()
        .collect();
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let end = rest
            .iter()
            .position(|r| r.priority != first.priority)
            .unwrap_or(rest.len());
        out.extend(weighted_order(&rest[..end], pick));
        rest = &rest[end..];
    }
    out
}

/// One priority's records in RFC 2782 weighted order. Weight-0 records go first in
/// the list the running sums are taken over, so they are picked only when the random
/// number is 0, or once only weight-0 records are left.
fn weighted_order(group: &[SrvRecord], pick: &mut impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    let mut left: Vec<SrvRecord> = group.iter().filter(|r| r.weight == 0).cloned().collect();
    left.extend(group.iter().filter(|r| r.weight != 0).cloned());
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u32 = left.iter().map(|r| u32::from(r.weight)).sum();
        let n = pick(total).min(total);
        let mut running = 0u32;
        let i = left
            .iter()
            .position(|r| {
                running += u32::from(r.weight);
                running >= n
            })
            .unwrap_or(0);
        out.push(left.remove(i));
    }
    out
}

/// Whether a SIP socket bound to `listen` can send to `ip`: an IPv4 listener reaches
/// IPv4 addresses, an IPv6 one IPv6 addresses, and `[::]` both.
pub fn reachable_from(listen: IpAddr, ip: IpAddr) -> bool {
    match listen {
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        _ => listen.is_ipv4() == ip.is_ipv4(),
    }
}

/// Addresses of one name in a stable order: IPv4 first, then IPv6, each in the
/// order the DNS gave them (A and AAAA answers arrive in either order).
pub fn stable_addresses(mut ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = Vec::with_capacity(ips.len());
    ips.retain(|ip| {
        let new = !seen.contains(ip);
        seen.push(*ip);
        new
    });
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
