//! The RFC 3261 §25.1 grammar of the header values the user agent reads: comma lists,
//! `name-addr` / `addr-spec` with header parameters (From, To, Contact, Route,
//! Record-Route) and `via-parm`. A `quoted-string` may hold `<`, `>`, `;`, `,`, `=`,
//! escaped quotes and UTF-8 (`+sip.instance="<urn:uuid:…>"`, `pub-gruu="sip:…;gr=…"`,
//! `"Doe, John \"JD\"" <sip:…>`), so values are scanned once, left to right, by the
//! grammar; nothing here searches for the last `>` or splits at every `;`.
//!
//! Parsed values borrow from the text (`&str` slices), and [`NameAddr::render`] /
//! [`Via::render`] print them back in canonical spacing. Pure code, no allocation
//! beyond the parameter lists.
//!
//! Lenient where real user agents are and the meaning stays clear: UTF-8 in an unquoted
//! display name, `:` and `[…]` in an unquoted parameter value (IPv6 `received`, `maddr`).

use std::borrow::Cow;
use std::fmt;

/// What is wrong with a header value and where (byte offset into the value). Says
/// nothing of the value itself: it may be a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GrammarError {
    pub(crate) what: &'static str,
    pub(crate) at: usize,
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for GrammarError {}

/// `token` characters (RFC 3261 §25.1).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// One header parameter: `name` or `name=value`, both as written (a quoted value keeps
/// its quotes and escapes; [`Param::unquoted`] takes them off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param<'a> {
    pub(crate) name: &'a str,
    pub(crate) value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value without quotes and with `\x` unescaped; None for a bare `name`.
    pub(crate) fn unquoted(&self) -> Option<Cow<'a, str>> {
        self.value.map(unquote)
    }
}

/// `"a\"b"` → `a"b`; a value that is not a quoted-string is returned as it is.
pub(crate) fn unquote(v: &str) -> Cow<'_, str> {
    let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return Cow::Borrowed(v);
    };
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` as a quoted-string: `"` and `\` escaped.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn find_param<'a>(params: &[Param<'a>], name: &str) -> Option<Param<'a>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .copied()
}

fn render_params(out: &mut String, params: &[Param<'_>]) {
    for p in params {
        out.push(';');
        out.push_str(p.name);
        if let Some(v) = p.value {
            out.push('=');
            out.push_str(v);
        }
    }
}

/// `name-addr` or `addr-spec` with header parameters (`contact-param`, `from-spec`,
/// `rec-route`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameAddr<'a> {
    /// As written: a quoted-string with its quotes, or tokens separated by blanks.
    pub(crate) display: Option<&'a str>,
    pub(crate) uri: &'a str,
    /// Written as `<uri>` (always so when there is a display name).
    pub(crate) angled: bool,
    pub(crate) params: Vec<Param<'a>>,
}

impl<'a> NameAddr<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, GrammarError> {
        let mut sc = Scan::new(text);
        sc.sws();
        let (display, uri, angled) = match sc.peek() {
            Some(b'"') => {
                let display = sc.quoted_string()?;
                sc.sws();
                if !sc.eat(b'<') {
                    return Err(sc.err("`<` expected after the display name"));
                }
                (Some(display), sc.angle_uri()?, true)
            }
            Some(b'<') => {
                sc.bump();
                (None, sc.angle_uri()?, true)
            }
            _ => match sc.display_tokens() {
                Some(display) => (Some(display), sc.angle_uri()?, true),
                None => (None, sc.addr_spec()?, false),
            },
        };
        let params = sc.params()?;
        sc.end()?;
        Ok(NameAddr {
            display,
            uri,
            angled,
            params,
        })
    }

    /// The parameter `name` (case-insensitive).
    pub(crate) fn param(&self, name: &str) -> Option<Param<'a>> {
        find_param(&self.params, name)
    }

    /// The display name without quotes and escapes.
    #[cfg(test)]
    pub(crate) fn display_name(&self) -> Option<Cow<'a, str>> {
        self.display.map(unquote)
    }

    /// Canonical text: `display <uri>;name=value`, no optional blanks (the property
    /// tests' round trip; we never rewrite a peer's name-addr).
    #[cfg(test)]
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Some(d) = self.display {
            out.push_str(d);
            out.push(' ');
        }
        if self.angled || self.display.is_some() {
            out.push('<');
            out.push_str(self.uri);
            out.push('>');
        } else {
            out.push_str(self.uri);
        }
        render_params(&mut out, &self.params);
        out
    }
}

/// One `via-parm`: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Via<'a> {
    pub(crate) transport: &'a str,
    /// The host of sent-by; an IPv6 reference without its brackets.
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
    pub(crate) params: Vec<Param<'a>>,
}

impl<'a> Via<'a> {
    pub(crate) fn parse(text: &'a str) -> Result<Self, GrammarError> {
        let mut sc = Scan::new(text);
        sc.sws();
        let name = sc.token();
        if !name.eq_ignore_ascii_case("SIP") {
            return Err(sc.err("protocol name SIP expected"));
        }
        sc.slash()?;
        if sc.token() != "2.0" {
            return Err(sc.err("protocol version 2.0 expected"));
        }
        sc.slash()?;
        let transport = sc.token();
        if transport.is_empty() {
            return Err(sc.err("transport expected"));
        }
        if !sc.sws() {
            return Err(sc.err("blank expected before sent-by"));
        }
        let host = sc.host()?;
        sc.sws();
        let port = if sc.eat(b':') {
            sc.sws();
            Some(sc.port()?)
        } else {
            None
        };
        let params = sc.params()?;
        sc.end()?;
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub(crate) fn param(&self, name: &str) -> Option<Param<'a>> {
        find_param(&self.params, name)
    }

    pub(crate) fn render(&self) -> String {
        let mut out = format!("SIP/2.0/{} ", self.transport);
        if self.host.contains(':') {
            out.push('[');
            out.push_str(self.host);
            out.push(']');
        } else {
            out.push_str(self.host);
        }
        if let Some(p) = self.port {
            out.push_str(&format!(":{p}"));
        }
        render_params(&mut out, &self.params);
        out
    }
}

/// Splits a header value holding a comma-separated list into its elements, trimmed. A
/// comma inside a quoted-string or `<…>` belongs to the element. An empty element, an
/// open quote or an open `<` is an error.
pub(crate) fn split_list(value: &str) -> Result<Vec<&str>, GrammarError> {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = skip_quoted(bytes, i)?,
            b'<' => {
                let close = bytes[i..].iter().position(|b| *b == b'>');
                i += close.ok_or(GrammarError {
                    what: "`<` without `>`",
                    at: i,
                })?;
            }
            b',' => {
                push_element(&mut out, value, start, i)?;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push_element(&mut out, value, start, bytes.len())?;
    Ok(out)
}

fn push_element<'a>(
    out: &mut Vec<&'a str>,
    value: &'a str,
    start: usize,
    end: usize,
) -> Result<(), GrammarError> {
    let element = value[start..end].trim_matches([' ', '\t']);
    if element.is_empty() {
        return Err(GrammarError {
            what: "empty list element",
            at: start,
        });
    }
    out.push(element);
    Ok(())
}

/// From the opening quote at `open`, the index of the closing quote (RFC 3261:
/// `quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)`, `qdtext` = LWS, visible ASCII but
/// `"` and `\`, and UTF-8 beyond ASCII).
fn skip_quoted(bytes: &[u8], open: usize) -> Result<usize, GrammarError> {
    let mut i = open + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok(i),
            b'\\' => {
                let next = bytes.get(i + 1).copied();
                if !matches!(next, Some(b) if b < 0x80 && b != b'\r' && b != b'\n') {
                    return Err(GrammarError {
                        what: "bad escape in quoted string",
                        at: i,
                    });
                }
                i += 2;
            }
            b' ' | b'\t' => i += 1,
            b if b < 0x20 || b == 0x7f => {
                return Err(GrammarError {
                    what: "control character in quoted string",
                    at: i,
                })
            }
            _ => i += 1,
        }
    }
    Err(GrammarError {
        what: "unterminated quoted string",
        at: open,
    })
}

/// A cursor over a header value. Positions only ever stop on ASCII bytes, so every
/// slice taken falls on a character boundary.
struct Scan<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn new(s: &'a str) -> Self {
        Scan { s, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn bump(&mut self) {
        self.i += 1;
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn err(&self, what: &'static str) -> GrammarError {
        GrammarError { what, at: self.i }
    }

    /// Skips blanks (folded lines were joined by the pre-pass); true if any.
    fn sws(&mut self) -> bool {
        let start = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i > start
    }

    fn take_while(&mut self, ok: impl Fn(u8) -> bool) -> &'a str {
        let start = self.i;
        while self.peek().is_some_and(&ok) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn token(&mut self) -> &'a str {
        self.take_while(is_token_byte)
    }

    fn quoted_string(&mut self) -> Result<&'a str, GrammarError> {
        let start = self.i;
        let close = skip_quoted(self.s.as_bytes(), start)?;
        self.i = close + 1;
        Ok(&self.s[start..self.i])
    }

    /// `*(token LWS)` followed by `<`: the display name, with the cursor after `<`.
    /// None (cursor unmoved) when what follows is no such thing: an addr-spec.
    fn display_tokens(&mut self) -> Option<&'a str> {
        let start = self.i;
        let mut end = start;
        loop {
            // UTF-8 in an unquoted display name is not in the grammar, but is sent.
            let word = self.take_while(|b| is_token_byte(b) || b >= 0x80);
            if word.is_empty() {
                break;
            }
            end = self.i;
            if !self.sws() {
                break;
            }
        }
        if end > start && self.eat(b'<') {
            return Some(&self.s[start..end]);
        }
        self.i = start;
        None
    }

    /// After `<`: the URI up to `>`, and the cursor after it.
    fn angle_uri(&mut self) -> Result<&'a str, GrammarError> {
        let start = self.i;
        let uri = self.take_while(|b| b != b'>');
        if !self.eat(b'>') {
            return Err(GrammarError {
                what: "`<` without `>`",
                at: start,
            });
        }
        check_uri(uri, start, b"<\" \t")?;
        Ok(uri)
    }

    /// A URI outside `<>`: up to the first `;` (what follows are header parameters);
    /// it must not hold `,`, `?` or blanks (RFC 3261 §20.10).
    fn addr_spec(&mut self) -> Result<&'a str, GrammarError> {
        let start = self.i;
        let uri = self.take_while(|b| b != b';' && b != b' ' && b != b'\t');
        check_uri(uri, start, b"<>\",?")?;
        Ok(uri)
    }

    /// `*( SEMI generic-param )`.
    fn params(&mut self) -> Result<Vec<Param<'a>>, GrammarError> {
        let mut params = Vec::new();
        loop {
            self.sws();
            if !self.eat(b';') {
                return Ok(params);
            }
            self.sws();
            let name = self.token();
            if name.is_empty() {
                return Err(self.err("empty or bad parameter name"));
            }
            self.sws();
            let value = if self.eat(b'=') {
                self.sws();
                let v = if self.peek() == Some(b'"') {
                    self.quoted_string()?
                } else {
                    self.take_while(|b| is_token_byte(b) || b"[]:".contains(&b))
                };
                if v.is_empty() {
                    return Err(self.err("parameter value expected after `=`"));
                }
                Some(v)
            } else {
                None
            };
            params.push(Param { name, value });
        }
    }

    fn end(&mut self) -> Result<(), GrammarError> {
        self.sws();
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    /// `SWS "/" SWS`.
    fn slash(&mut self) -> Result<(), GrammarError> {
        self.sws();
        if !self.eat(b'/') {
            return Err(self.err("`/` expected in the sent-protocol"));
        }
        self.sws();
        Ok(())
    }

    /// `hostname / IPv4address / IPv6reference`; brackets stripped.
    fn host(&mut self) -> Result<&'a str, GrammarError> {
        if self.eat(b'[') {
            let start = self.i;
            let v6 = self.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if v6.is_empty() || !self.eat(b']') {
                return Err(GrammarError {
                    what: "bad IPv6 reference",
                    at: start,
                });
            }
            return Ok(v6);
        }
        let host = self.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if host.is_empty() {
            return Err(self.err("host expected"));
        }
        Ok(host)
    }

    fn port(&mut self) -> Result<u16, GrammarError> {
        let start = self.i;
        let digits = self.take_while(|b| b.is_ascii_digit());
        digits.parse().map_err(|_| GrammarError {
            what: "bad port",
            at: start,
        })
    }
}

/// A URI has a scheme (`x:`), is not empty and holds none of `forbidden`.
fn check_uri(uri: &str, at: usize, forbidden: &[u8]) -> Result<(), GrammarError> {
    let scheme_ok = uri.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    });
    if uri.is_empty() || !scheme_ok {
        return Err(GrammarError {
            what: "URI expected",
            at,
        });
    }
    if let Some(i) = uri.bytes().position(|b| forbidden.contains(&b)) {
        return Err(GrammarError {
            what: "character not allowed in this URI",
            at: at + i,
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
