//! SIP message text: the normalising pre-pass, parsing into the few fields the user agent
//! needs, and rendering requests/responses. Built on `rsip`; no I/O, no clocks.
//!
//! rsip does not understand compact header names (`v:`, `f:`, ...), folded header lines,
//! bare-LF line ends or `Via :` (space before the colon), all of which real trunks send, so
//! [`normalize`] rewrites the header block into the canonical form before rsip sees it.
//! The values we read (From, To, Contact, Record-Route, Via) are then checked and split
//! by [`super::grammar`], which follows RFC 3261's grammar: a quoted parameter value may
//! hold `<`, `;` or `,` (`+sip.instance="<urn:uuid:…>"`).

use super::grammar::{self, GrammarError, NameAddr, Via};
use rsip::headers::{ToTypedHeader, UntypedHeader};
use rsip::Header;
use std::net::{IpAddr, SocketAddr};

/// Why an incoming datagram could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("empty datagram (keep-alive)")]
    KeepAlive,
    #[error("no empty line after the headers (truncated)")]
    NoHeaderEnd,
    #[error("header block is not UTF-8")]
    NotUtf8,
    /// The line number only: the line itself may carry a credential.
    #[error("line {0}: a header line without a colon, or a folded first header")]
    BadHeaderLine(usize),
    #[error("body shorter than Content-Length ({have} < {want})")]
    Truncated { have: usize, want: usize },
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("rsip: {0}")]
    Rsip(String),
    #[error("request lacks mandatory header {0}")]
    MissingHeader(&'static str, Box<rsip::Request>),
    #[error("response lacks or has a malformed mandatory header {0}")]
    BadResponse(&'static str),
    #[error("malformed start line")]
    BadStartLine,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("malformed {header}: {error}")]
    Header {
        header: &'static str,
        error: GrammarError,
    },
}

/// Why a TCP/TLS byte stream cannot be cut into SIP messages (the connection is dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// No blank line within the first 64 KiB.
    #[error("header block too long")]
    HeadTooLong,
    /// The header block is not UTF-8.
    #[error("header block is not UTF-8")]
    NotUtf8,
    /// A Content-Length that is not a number (the value as sent).
    #[error("bad Content-Length {0:?}")]
    BadContentLength(String),
    /// Two Content-Length headers that disagree.
    #[error("conflicting Content-Length")]
    ConflictingContentLength,
    /// No Content-Length, which streams require.
    #[error("no Content-Length on a stream transport")]
    NoContentLength,
    /// A body above 1 MiB.
    #[error("Content-Length too large")]
    ContentLengthTooLarge,
}

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

/// Stream framing: is a complete message in `buf`? Checked before parsing, as a TCP read
/// may hold half a message or several (see [`crate::sip::frame_stream`]).
pub(crate) fn frame(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    /// A header block longer than this is an attack or garbage, not SIP.
    const MAX_HEAD: usize = 64 * 1024;
    let skip = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let rest = &buf[skip..];
    let Some(end) = find(rest, b"\r\n\r\n") else {
        if rest.len() > MAX_HEAD {
            return Err(FrameError::HeadTooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&rest[..end]).map_err(|_| FrameError::NotUtf8)?;
    let mut length = None;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| FrameError::BadContentLength(value.trim().to_owned()))?;
            if length.is_some_and(|l| l != n) {
                return Err(FrameError::ConflictingContentLength);
            }
            length = Some(n);
        }
    }
    // Mandatory on streams: without it the message boundary is unknown.
    let length = length.ok_or(FrameError::NoContentLength)?;
    if length > 1024 * 1024 {
        return Err(FrameError::ContentLengthTooLarge);
    }
    let total = end + 4 + length;
    Ok((rest.len() >= total).then_some((skip, total)))
}

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
fn rsip_knows(method: &str) -> bool {
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

const STAND_IN_URI: &str = "sip:request-uri.invalid";

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
fn bare_ipv6_host(uri: &str) -> bool {
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

/// The Request-URI of a request as sent, `;` in the user escaped as for rsip.
fn request_uri_text(data: &[u8]) -> Option<String> {
    let start = data.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let line = data[start..].split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    Some(escape_user_semicolons(line.split(' ').nth(1)?))
}

/// Whether a request's Request-URI uses a scheme we handle (sip, sips, tel).
fn supported_scheme(data: &[u8]) -> bool {
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(0);
    let line = data[start..].split(|b| *b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let uri = line.split(' ').nth(1).unwrap_or("");
    let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
    matches!(scheme.as_str(), "sip" | "sips" | "tel")
}

/// `sip:user;par=x@host` -> `sip:user%3Bpar=x@host`: same user for us, parseable by rsip.
fn escape_user_semicolons(uri: &str) -> String {
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

/// The method token of a request's start line as sent (extension methods included).
fn request_method_text(data: &[u8]) -> Option<String> {
    let start = data.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let line = data[start..].split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    if line.starts_with("SIP/") {
        return None;
    }
    line.split(' ').next().map(str::to_string)
}

fn header_value_of<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (n, v) = line.split_once(':')?;
    n.eq_ignore_ascii_case(name).then(|| v.trim())
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The elements of a comma-separated header value (Via, Contact, Record-Route); none
/// when the value does not follow the grammar (parsed messages were checked already).
pub(crate) fn split_list(value: &str) -> Vec<&str> {
    grammar::split_list(value).unwrap_or_default()
}

/// The parameter `name` of a From/To/Contact/Route value, unquoted (`tag`, `expires`,
/// `+sip.instance`).
pub(crate) fn addr_param(value: &str, name: &str) -> Option<String> {
    let addr = NameAddr::parse(value).ok()?;
    addr.param(name)?.unquoted().map(|v| v.into_owned())
}

/// The parameter `name` of a Via value, unquoted (`branch`, `received`).
pub(crate) fn via_param(via: &str, name: &str) -> Option<String> {
    let via = Via::parse(via).ok()?;
    via.param(name)?.unquoted().map(|v| v.into_owned())
}

/// The URI of a name-addr (`"x" <sip:a@b>;tag=1`) or addr-spec (`sip:a@b;tag=1`); the
/// trimmed value itself when it is neither.
pub(crate) fn addr_uri(value: &str) -> &str {
    NameAddr::parse(value).map_or(value.trim(), |a| a.uri)
}

/// Fields of a parsed message the user agent works with. Raw header values are kept as
/// text so responses and in-dialog requests echo them byte for byte.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) start: StartLine,
    pub(crate) vias: Vec<String>,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) call_id: String,
    pub(crate) cseq: u32,
    pub(crate) cseq_method: rsip::Method,
    pub(crate) contact_uri: Option<String>,
    pub(crate) record_route: Vec<String>,
    pub(crate) content_type: Option<String>,
    /// `WWW-Authenticate` (false) and `Proxy-Authenticate` (true) values, in order.
    pub(crate) challenges: Vec<(bool, String)>,
    /// Every Contact value (name-addr with parameters), e.g. for REGISTER's `expires`.
    pub(crate) contacts: Vec<String>,
    pub(crate) expires: Option<u32>,
    pub(crate) min_expires: Option<u32>,
    /// The first `Authorization` value (a request to our registrar), as text.
    pub(crate) authorization: Option<String>,
    /// An extension method (RFC 3261 §25.1): `start` then holds a stand-in method.
    pub(crate) extension_method: Option<String>,
    /// The Request-URI's scheme is not sip/sips/tel (answer 416).
    pub(crate) unsupported_uri_scheme: bool,
    /// A request's Request-URI as written (e.g. who an inbound INVITE is for).
    pub(crate) request_uri: Option<String>,
    pub(crate) body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) enum StartLine {
    Request { method: rsip::Method },
    Response { status: u16, reason: String },
}

impl Message {
    pub(crate) fn top_branch(&self) -> Option<String> {
        self.vias.first().and_then(|v| via_param(v, "branch"))
    }
    /// The top Via's sent-by as `host:port` (host lowercased, no port = 0): with the
    /// branch and the method, what identifies a server transaction (RFC 3261 §17.2.3).
    pub(crate) fn top_sent_by(&self) -> Option<String> {
        let via = Via::parse(self.vias.first()?).ok()?;
        Some(format!(
            "{}:{}",
            via.host.to_ascii_lowercase(),
            via.port.unwrap_or(0)
        ))
    }
    pub(crate) fn tag_in_from(&self) -> Option<String> {
        addr_param(&self.from, "tag")
    }
    pub(crate) fn tag_in_to(&self) -> Option<String> {
        addr_param(&self.to, "tag")
    }
    pub(crate) fn body_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// Parses one datagram. Never panics; everything wrong is a [`ParseError`].
pub(crate) fn parse(data: &[u8]) -> Result<Message, ParseError> {
    let normalized = normalize(data)?;
    let method_text = request_method_text(data);
    let extension = method_text.as_deref().filter(|m| !rsip_knows(m));
    // The CSeq must name the method of the start line (RFC 4475 §3.1.2.17/18); for an
    // extension method rsip's CSeq parser needs the same stand-in as the start line.
    let normalized = match extension {
        Some(m) => replace_cseq_method(&normalized, m)?,
        None => normalized,
    };
    let msg = rsip::SipMessage::try_from(normalized.as_slice())
        .map_err(|e| ParseError::Rsip(rsip_reason(&e)))?;
    let (start, headers, body) = match msg {
        rsip::SipMessage::Request(req) => {
            // The grammar first: what extract() reads below is then well-formed.
            check_headers(&req.headers)?;
            let fields = extract(&req.headers);
            let mut m = match fields {
                Ok(f) => f.into_message(StartLine::Request { method: req.method }, req.body),
                Err(missing) => return Err(ParseError::MissingHeader(missing, Box::new(req))),
            };
            if extension.is_none() && m.cseq_method != req.method {
                return Err(ParseError::Invalid(
                    "CSeq method (differs from the request's)",
                ));
            }
            m.extension_method = extension.map(str::to_string);
            m.unsupported_uri_scheme = !supported_scheme(data);
            let uri = req.uri.to_string();
            // rsip could not read it (an IPv6 reference): ours can.
            m.request_uri = Some(if uri == STAND_IN_URI {
                request_uri_text(data)
                    .and_then(|u| parse_uri(&u).ok())
                    .map_or(uri, |u| u.to_string())
            } else {
                uri
            });
            return Ok(m);
        }
        rsip::SipMessage::Response(resp) => {
            let status = resp.status_code.code();
            let reason = reason_phrase(data).unwrap_or_default();
            (
                StartLine::Response { status, reason },
                resp.headers,
                resp.body,
            )
        }
    };
    check_headers(&headers)?;
    let fields = extract(&headers).map_err(ParseError::BadResponse)?;
    Ok(fields.into_message(start, body))
}

/// What rsip said, without the message text its tokenizer errors quote (which may hold
/// a credential): the kind of error and, for the tokenizer, what it was splitting.
fn rsip_reason(e: &rsip::Error) -> String {
    match e {
        rsip::Error::TokenizeError(s) => {
            let what = s
                .strip_prefix("failed to tokenize ")
                .and_then(|rest| rest.split(':').next())
                .filter(|w| {
                    w.len() <= 40
                        && w.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'_')
                });
            match what {
                Some(w) => format!("could not split the message ({w})"),
                None => "could not split the message".to_string(),
            }
        }
        rsip::Error::MissingHeader(_) => "a mandatory header is missing".to_string(),
        rsip::Error::InvalidParam(_) => "invalid header parameter".to_string(),
        rsip::Error::ParseError(_) => "could not parse a part of the message".to_string(),
        rsip::Error::Utf8Error(_) => "not UTF-8".to_string(),
        rsip::Error::Unexpected(_) => "unexpected parser error".to_string(),
    }
}

/// Swaps an extension method in the CSeq for `OPTIONS`, the stand-in the start line got.
/// A CSeq naming another method is a mismatch.
fn replace_cseq_method(normalized: &[u8], method: &str) -> Result<Vec<u8>, ParseError> {
    let text = std::str::from_utf8(normalized).map_err(|_| ParseError::NotUtf8)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut out = String::with_capacity(text.len());
    let mut seen = false;
    for line in head.split("\r\n") {
        match header_value_of(line, "CSeq") {
            Some(v) => {
                let mut it = v.split_whitespace();
                let (num, m) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                if m != method || it.next().is_some() {
                    return Err(ParseError::Invalid(
                        "CSeq method (differs from the request's)",
                    ));
                }
                seen = true;
                out.push_str(&format!("CSeq: {num} OPTIONS"));
            }
            None => out.push_str(line),
        }
        out.push_str("\r\n");
    }
    if !seen {
        return Err(ParseError::Invalid("CSeq"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&normalized[normalized.len() - body.len()..]);
    Ok(bytes)
}

/// Checks on headers rsip accepts but RFC 3261 does not (RFC 4475 §3.1.2, §3.3.8): the
/// §25.1 grammar of the values we read, and single-value headers that are repeated.
fn check_headers(headers: &rsip::Headers) -> Result<(), ParseError> {
    let (mut from, mut to, mut call_id, mut cseq, mut max_fwd) = (0, 0, 0, 0, 0);
    for h in headers.iter() {
        match h {
            Header::From(v) => {
                from += 1;
                name_addrs("From", v.value(), false)?;
            }
            Header::To(v) => {
                to += 1;
                name_addrs("To", v.value(), false)?;
            }
            Header::Contact(v) if v.value().trim() != "*" => {
                name_addrs("Contact", v.value(), true)?;
            }
            Header::RecordRoute(v) => name_addrs("Record-Route", v.value(), true)?,
            Header::Via(v) => {
                for via in grammar::split_list(v.value()).map_err(bad("Via"))? {
                    Via::parse(via).map_err(bad("Via"))?;
                }
            }
            Header::CallId(_) => call_id += 1,
            Header::CSeq(_) => cseq += 1,
            Header::MaxForwards(v) => {
                max_fwd += 1;
                if v.value().trim().parse::<u8>().is_err() {
                    return Err(ParseError::Invalid("Max-Forwards"));
                }
            }
            // RFC 3261 §20.17 / RFC 1123: the only zone allowed is GMT (RFC 4475 §3.1.2.12).
            Header::Date(v) if !v.value().trim().ends_with(" GMT") => {
                return Err(ParseError::Invalid("Date"))
            }
            _ => {}
        }
    }
    if from > 1 || to > 1 || call_id > 1 || cseq > 1 || max_fwd > 1 {
        return Err(ParseError::Invalid("repeated single-value header"));
    }
    Ok(())
}

fn bad(header: &'static str) -> impl Fn(GrammarError) -> ParseError {
    move |error| ParseError::Header { header, error }
}

/// A From/To (one value) or Contact/Record-Route (a list) value follows the name-addr /
/// addr-spec grammar.
fn name_addrs(header: &'static str, value: &str, list: bool) -> Result<(), ParseError> {
    let elements = if list {
        grammar::split_list(value).map_err(bad(header))?
    } else {
        vec![value]
    };
    for e in elements {
        NameAddr::parse(e).map_err(bad(header))?;
    }
    Ok(())
}

/// rsip maps unknown codes to the reason "Other"; keep what the peer actually said.
fn reason_phrase(data: &[u8]) -> Option<String> {
    let start = data.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let data = &data[start..];
    let end = data.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&data[..end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    parts.next()?;
    parts.next()?;
    Some(parts.next().unwrap_or("").trim().to_string())
}

struct Fields {
    vias: Vec<String>,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    cseq_method: rsip::Method,
    contact_uri: Option<String>,
    record_route: Vec<String>,
    content_type: Option<String>,
    challenges: Vec<(bool, String)>,
    contacts: Vec<String>,
    expires: Option<u32>,
    min_expires: Option<u32>,
    authorization: Option<String>,
}

impl Fields {
    fn into_message(self, start: StartLine, body: Vec<u8>) -> Message {
        Message {
            start,
            vias: self.vias,
            from: self.from,
            to: self.to,
            call_id: self.call_id,
            cseq: self.cseq,
            cseq_method: self.cseq_method,
            contact_uri: self.contact_uri,
            record_route: self.record_route,
            content_type: self.content_type,
            challenges: self.challenges,
            contacts: self.contacts,
            expires: self.expires,
            min_expires: self.min_expires,
            authorization: self.authorization,
            extension_method: None,
            unsupported_uri_scheme: false,
            request_uri: None,
            body,
        }
    }
}

fn extract(headers: &rsip::Headers) -> Result<Fields, &'static str> {
    let mut vias = Vec::new();
    let mut from = None;
    let mut to = None;
    let mut call_id = None;
    let mut cseq = None;
    let mut contact_uri = None;
    let mut record_route = Vec::new();
    let mut content_type = None;
    let mut challenges = Vec::new();
    let mut contacts = Vec::new();
    let mut expires = None;
    let mut min_expires = None;
    let mut authorization = None;
    for h in headers.iter() {
        match h {
            Header::Via(v) => vias.extend(split_list(v.value()).into_iter().map(str::to_string)),
            Header::From(v) if from.is_none() => from = Some(v.value().to_string()),
            Header::To(v) if to.is_none() => to = Some(v.value().to_string()),
            Header::CallId(v) if call_id.is_none() => call_id = Some(v.value().to_string()),
            Header::CSeq(v) if cseq.is_none() => cseq = Some(v.typed().map_err(|_| "CSeq")?),
            Header::Contact(v) => {
                let list = split_list(v.value());
                if contact_uri.is_none() {
                    contact_uri = list.first().map(|c| addr_uri(c).to_string());
                }
                contacts.extend(list.into_iter().map(str::to_string));
            }
            // Challenges are kept as text: rsip's typed form rejects qop lists and SHA-256.
            Header::WwwAuthenticate(v) => challenges.push((false, v.value().to_string())),
            Header::ProxyAuthenticate(v) => challenges.push((true, v.value().to_string())),
            Header::Expires(v) => expires = v.value().trim().parse().ok(),
            Header::MinExpires(v) => min_expires = v.value().trim().parse().ok(),
            Header::Authorization(v) if authorization.is_none() => {
                authorization = Some(v.value().to_string())
            }
            Header::RecordRoute(v) => {
                record_route.extend(split_list(v.value()).into_iter().map(str::to_string))
            }
            Header::ContentType(v) => content_type = Some(v.value().trim().to_ascii_lowercase()),
            _ => {}
        }
    }
    if vias.is_empty() {
        return Err("Via");
    }
    let cseq = cseq.ok_or("CSeq")?;
    Ok(Fields {
        vias,
        from: from.filter(|s| !s.is_empty()).ok_or("From")?,
        to: to.filter(|s| !s.is_empty()).ok_or("To")?,
        call_id: call_id.filter(|s| !s.is_empty()).ok_or("Call-ID")?,
        cseq: cseq.seq,
        cseq_method: cseq.method,
        contact_uri,
        record_route,
        content_type,
        challenges,
        contacts,
        expires,
        min_expires,
        authorization,
    })
}

/// Where a UDP response to a request goes (RFC 3261 §18.2.2 with RFC 3581 rport), and the
/// top Via rewritten with `received`/`rport` to echo in the response.
pub(crate) fn response_route(top_via: &str, from: SocketAddr) -> (SocketAddr, String) {
    let Ok(mut via) = Via::parse(top_via) else {
        // Parsed messages had their Vias checked; answer where it came from regardless.
        return (from, top_via.to_string());
    };
    let rport = via.param("rport").is_some();
    let host_differs = via.host.parse::<IpAddr>().ok() != Some(from.ip());
    via.params.retain(|p| {
        !p.name.eq_ignore_ascii_case("rport") && !p.name.eq_ignore_ascii_case("received")
    });
    let mut base = via.render();
    if rport || host_differs {
        base.push_str(&format!(";received={}", from.ip()));
    }
    if rport {
        base.push_str(&format!(";rport={}", from.port()));
        return (from, base);
    }
    let port = via.port.unwrap_or(5060);
    (SocketAddr::new(from.ip(), port), base)
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
