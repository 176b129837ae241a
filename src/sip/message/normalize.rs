//! The pre-pass that rewrites what real trunks send (compact names, folded lines, bare
//! LF, odd start lines) into the canonical form rsip parses.

use super::grammar;
use super::uri::bare_ipv6_host;
use super::{find, header_value_of, ParseError};

/// Compact forms from the IANA SIP header registry (RFC 3261 §7.3.3 and later RFCs).
fn expand_compact(name: &str) -> Option<&'static str> {
    if name.len() != 1 {
        return None;
    }
    Some(match name.as_bytes()[0].to_ascii_lowercase() {
        b'a' => "Accept-Contact",
        b'b' => "Referred-By",
        b'c' => "Content-Type",
        b'd' => "Request-Disposition",
        b'e' => "Content-Encoding",
        b'f' => "From",
        b'i' => "Call-ID",
        b'j' => "Reject-Contact",
        b'k' => "Supported",
        b'l' => "Content-Length",
        b'm' => "Contact",
        b'n' => "Identity-Info",
        b'o' => "Event",
        b'r' => "Refer-To",
        b's' => "Subject",
        b't' => "To",
        b'u' => "Allow-Events",
        b'v' => "Via",
        b'x' => "Session-Expires",
        b'y' => "Identity",
        _ => return None,
    })
}

/// Rewrites a datagram into the form rsip parses: CRLF line ends, one line per header,
/// long header names, no space before the colon, body cut to Content-Length.
pub(crate) fn normalize(data: &[u8]) -> Result<Vec<u8>, ParseError> {
    // RFC 5626 keep-alives and stray CRLFs before a message are legal on UDP.
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .ok_or(ParseError::KeepAlive)?;
    let data = &data[start..];
    let (head, body) = split_head_body(data).ok_or(ParseError::NoHeaderEnd)?;
    let head = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;

    let mut lines: Vec<String> = Vec::new();
    for (number, raw) in head.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        if lines.is_empty() {
            lines.push(start_line(line)?);
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            // Folded continuation (RFC 3261 §7.3.1): equivalent to a single space.
            if lines.len() > 1 {
                if let Some(prev) = lines.last_mut() {
                    prev.push(' ');
                    prev.push_str(line.trim());
                    continue;
                }
            }
            return Err(ParseError::BadHeaderLine(number + 1));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(ParseError::BadHeaderLine(number + 1));
        };
        let name = name.trim();
        let name = expand_compact(name).unwrap_or(name);
        lines.push(format!("{}: {}", name, value.trim()));
    }

    let mut body = body;
    let lengths: Vec<&str> = lines
        .iter()
        .skip(1)
        .filter_map(|l| header_value_of(l, "Content-Length"))
        .collect();
    if lengths.len() > 1 {
        // RFC 4475 §3.3.9: with two lengths nobody knows where the body ends.
        return Err(ParseError::BadContentLength);
    }
    if let Some(len) = lengths.first() {
        let want: usize = len.parse().map_err(|_| ParseError::BadContentLength)?;
        if body.len() < want {
            return Err(ParseError::Truncated {
                have: body.len(),
                want,
            });
        }
        body = &body[..want];
    }

    let mut out = Vec::with_capacity(data.len() + 32);
    for l in &lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

/// Methods rsip has a variant for; others are extension methods (RFC 3261 §25.1
/// `extension-method = token`), which rsip cannot represent.
pub(super) fn rsip_knows(method: &str) -> bool {
    method.parse::<rsip::Method>().is_ok()
}

/// Checks the start line and rewrites it into what rsip parses:
/// - requests: `Method SP Request-URI SP SIP/2.0`, exactly one space apart, nothing after
///   (RFC 4475 §3.1.2.9/3.1.2.10), the URI not in `<>` and without headers (§3.1.2.7,
///   §3.1.2.11); an extension method becomes `OPTIONS` here and is restored by [`parse`];
///   a `;` in the user part is escaped (rsip rejects it, RFC 3261 allows it, §3.1.1.9);
/// - responses: an empty reason phrase (§3.1.1.13) gets a placeholder rsip accepts.
fn start_line(line: &str) -> Result<String, ParseError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let reason = parts.next().unwrap_or("").trim();
        if rest.is_empty() || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::BadStartLine);
        }
        let reason = if reason.is_empty() { "-" } else { reason };
        return Ok(format!("{version} {code} {reason}"));
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(ParseError::BadStartLine);
    };
    if !grammar::is_token(method) || version != "SIP/2.0" || uri.is_empty() {
        return Err(ParseError::BadStartLine);
    }
    // Headers (`?`) are not allowed in a Request-URI; a `?` in the user part is.
    let host_part = uri.rsplit_once('@').map_or(uri, |(_, h)| h);
    if uri.starts_with('<') || host_part.contains('?') {
        return Err(ParseError::Invalid("Request-URI"));
    }
    let method = if rsip_knows(method) {
        method
    } else {
        "OPTIONS"
    };
    let uri = escape_user_semicolons(uri);
    if bare_ipv6_host(&uri) {
        // RFC 5118 §4.2: an IPv6 address must be in brackets; unbracketed, its colons
        // would be read as a port.
        return Err(ParseError::Invalid("Request-URI (IPv6 address without [])"));
    }
    // We never use the Request-URI of a request we receive, so one rsip cannot read
    // (valid but unusual, RFC 4475 §3.1.1.2, or an unknown scheme, §3.3.2) is replaced
    // by a stand-in; `parse` notes an unsupported scheme so the UA can answer 416.
    let uri = if rsip::Uri::try_from(uri.as_str()).is_ok() {
        uri
    } else {
        STAND_IN_URI.to_string()
    };
    Ok(format!("{method} {uri} {version}"))
}

pub(super) const STAND_IN_URI: &str = "sip:request-uri.invalid";

/// `sip:user;par=x@host` -> `sip:user%3Bpar=x@host`: same user for us, parseable by rsip.
pub(super) fn escape_user_semicolons(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return uri.to_string();
    };
    match rest.rsplit_once('@') {
        Some((user, host))
            if user.contains(';') && scheme.to_ascii_lowercase().starts_with("sip") =>
        {
            format!("{scheme}:{}@{host}", user.replace(';', "%3B"))
        }
        _ => uri.to_string(),
    }
}

/// Splits at the first empty line (CRLF CRLF, or LF LF from sloppy senders). The empty
/// line is mandatory (RFC 3261 §7): without it the datagram is a truncated message.
fn split_head_body(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = find(data, b"\r\n\r\n").map(|i| (i, 4));
    let lf = find(data, b"\n\n").map(|i| (i, 2));
    let cut = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };
    cut.map(|(i, n)| (&data[..i], &data[i + n..]))
}
