//! Parsing the SIP URIs we send to or keep, IPv6 references included (RFC 5118).

/// Why a SIP URI we send to or keep could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Not `sip:`/`sips:`, or with blanks or angle brackets.
    #[error("not a sip: URI")]
    NotSip,
    /// A `[...]` host that is not an IPv6 address.
    #[error("bad IPv6 reference [{0}]")]
    BadIpv6(String),
    /// rsip's own complaint.
    #[error("{0}")]
    Rsip(String),
}

/// The host rsip parses in place of an IPv6 reference (see [`parse_uri`]).
const V6_STAND_IN: &str = "ipv6-reference.invalid";

/// Parses a SIP URI we send to or keep (Request-URI, Contact, Route, registrar).
/// rsip 0.4 does not know IPv6 references (RFC 3261 §19.1.1 `sip:u@[2001:db8::1]:5060`):
/// it splits host and port at the first colon. Such a host is parsed as a stand-in name
/// and put back as the bracketed address (a `Domain`, which rsip prints as written), so
/// the URI renders as `sip:u@[2001:db8::1]:5060` again.
pub(crate) fn parse_uri(text: &str) -> Result<rsip::Uri, UriError> {
    let rsip_err = |e: rsip::Error| UriError::Rsip(e.to_string());
    let Some((start, end)) = ipv6_reference(text) else {
        return rsip::Uri::try_from(text).map_err(rsip_err);
    };
    let inner = &text[start + 1..end - 1];
    let ip: std::net::Ipv6Addr = inner
        .parse()
        .map_err(|_| UriError::BadIpv6(inner.to_owned()))?;
    let stand_in = format!("{}{V6_STAND_IN}{}", &text[..start], &text[end..]);
    let mut uri = rsip::Uri::try_from(stand_in.as_str()).map_err(rsip_err)?;
    uri.host_with_port.host = rsip::Host::Domain(format!("[{ip}]").into());
    Ok(uri)
}

/// The byte range of the `[…]` host of a URI (brackets included): a `[` right after the
/// scheme's colon or the userinfo's `@`, up to its `]`.
fn ipv6_reference(text: &str) -> Option<(usize, usize)> {
    let start = text.find('[')?;
    let before = text[..start].chars().last()?;
    if before != '@' && before != ':' {
        return None;
    }
    if before == ':' && text[..start - 1].contains(['@', ';', '?']) {
        return None;
    }
    let close = text[start..].find(']')?;
    Some((start, start + close + 1))
}

/// `sip:2001:db8::10`: a sip(s) URI whose host has two or more colons and no brackets.
pub(super) fn bare_ipv6_host(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return false;
    }
    let rest = rest.split([';', '?']).next().unwrap_or("");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    !host.starts_with('[') && host.matches(':').count() >= 2
}
