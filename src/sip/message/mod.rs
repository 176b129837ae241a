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

mod frame;
mod normalize;
mod uri;

pub(crate) use frame::frame;
pub use frame::FrameError;
pub(crate) use normalize::normalize;
use normalize::{escape_user_semicolons, rsip_knows, STAND_IN_URI};
pub(crate) use uri::parse_uri;
pub use uri::UriError;

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
mod tests;
