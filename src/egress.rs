//! Where the gateway may send HTTP on a client's say-so (webhook
//! `callback_url`): https only unless `webhooks.allow_http`, and never to a
//! loopback, private, link-local (cloud metadata), CGNAT, multicast or
//! otherwise internal address unless `webhooks.allow_private_targets`. The
//! URL is checked when a verification starts and again at each delivery,
//! where the addresses a name resolves to are filtered by the same rule and
//! the connection goes only to those (no DNS rebinding between check and
//! connect).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// What callback targets are allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_http: bool,
    pub allow_private: bool,
}

/// Why an address is internal, if it is.
pub fn internal_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64: the IPv4 address it stands for decides.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                internal_v4(v4)
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared address space (CGNAT)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        Some("multicast or reserved")
    } else if (o[0], o[1], o[2]) == (192, 0, 0)
        || (o[0], o[1]) == (198, 18)
        || (o[0], o[1]) == (198, 19)
    {
        Some("reserved")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

/// Why a callback URL is refused; the text is for a 422 or a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    /// Not a URL at all.
    #[error("not a valid URL: {0}")]
    Invalid(String),
    /// http while `webhooks.allow_http` is off.
    #[error("must be https (http needs webhooks.allow_http = true on the gateway)")]
    PlainHttp,
    /// Neither http nor https.
    #[error("scheme {0:?} is not allowed; use https")]
    Scheme(String),
    /// No host part.
    #[error("has no host")]
    NoHost,
    /// The name does not resolve.
    #[error("host {host} does not resolve: {error}")]
    Unresolved {
        /// The host name.
        host: String,
        /// The resolver's error.
        error: String,
    },
    /// The name resolved to nothing.
    #[error("host has no address")]
    NoAddress,
    /// An address in a loopback, private, link-local or similar range.
    #[error("resolves to {ip}, a {kind} address (allowed only with webhooks.allow_private_targets = true)")]
    Internal {
        /// The address.
        ip: IpAddr,
        /// Which kind of internal range.
        kind: &'static str,
    },
}

/// Checks a callback URL: its form and scheme, and every address its host
/// resolves to.
pub async fn check_url(url: &str, policy: TargetPolicy) -> Result<(), UrlRefused> {
    let parsed: reqwest::Url = url
        .parse()
        .map_err(|e: url::ParseError| UrlRefused::Invalid(e.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        "http" => return Err(UrlRefused::PlainHttp),
        other => return Err(UrlRefused::Scheme(other.to_owned())),
    }
    let host = parsed.host().ok_or(UrlRefused::NoHost)?;
    if policy.allow_private {
        return Ok(());
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(ip)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| UrlRefused::Unresolved {
                host: name.to_owned(),
                error: e.to_string(),
            })?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlRefused::NoAddress);
    }
    for ip in addrs {
        if let Some(kind) = internal_address(ip) {
            return Err(UrlRefused::Internal { ip, kind });
        }
    }
    Ok(())
}

/// A DNS resolver for the webhook client that drops internal addresses, so
/// a name that changed its answer since the check still cannot reach one.
#[derive(Debug, Default)]
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| internal_address(a.ip()).is_none())
                .collect();
            if found.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address").into();
                return Err(err);
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// The resolver to install for `policy` (none when private targets are
/// allowed).
pub fn resolver_for(policy: TargetPolicy) -> Option<Arc<PublicOnlyResolver>> {
    (!policy.allow_private).then(|| Arc::new(PublicOnlyResolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn internal_addresses_are_named() {
        for (addr, internal) in [
            ("127.0.0.1", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.100.100.200", true),
            ("0.0.0.0", true),
            ("224.0.0.1", true),
            ("255.255.255.255", true),
            ("8.8.8.8", false),
            ("93.184.216.34", false),
            ("::1", true),
            ("::", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:10.0.0.1", true),
            ("64:ff9b::a00:1", true),
            ("64:ff9b::808:808", false),
            ("2606:4700:4700::1111", false),
        ] {
            assert_eq!(
                internal_address(ip(addr)).is_some(),
                internal,
                "{addr}: {:?}",
                internal_address(ip(addr))
            );
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_and_address() {
        let strict = TargetPolicy::default();
        assert!(check_url("https://8.8.8.8/hook", strict).await.is_ok());
        for bad in [
            "http://8.8.8.8/hook",
            "ftp://8.8.8.8/x",
            "https://127.0.0.1/hook",
            "https://[::1]:8443/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/hook",
            "https://[::ffff:192.168.0.1]/hook",
            "https://localhost/hook",
            "not a url",
        ] {
            assert!(check_url(bad, strict).await.is_err(), "{bad} accepted");
        }
        let lax = TargetPolicy {
            allow_http: true,
            allow_private: true,
        };
        assert!(check_url("http://127.0.0.1:9/hook", lax).await.is_ok());
        let http_only = TargetPolicy {
            allow_http: true,
            allow_private: false,
        };
        assert!(check_url("http://127.0.0.1:9/hook", http_only)
            .await
            .is_err());
    }
}
