//! SDP offer/answer (RFC 3264/4566) for the one audio stream a call has: we always offer,
//! the far end answers. Pure text in, values out. With SRTP, SDES keys (RFC 4568
//! `a=crypto`) ride in the offer and the answer (see [`SdesOffer`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;

use crate::domain::sdes::{MasterKey, Suite};

/// G.711 variants we can send (prompts are pre-encoded in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
}

impl AudioCodec {
    /// Static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
        }
    }

    pub fn encoding_name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
        }
    }

    fn from_encoding(name: &str, clock: Option<u32>) -> Option<Self> {
        if clock.is_some_and(|c| c != 8000) {
            return None;
        }
        if name.eq_ignore_ascii_case("PCMU") {
            Some(AudioCodec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(AudioCodec::Pcma)
        } else {
            None
        }
    }
}

/// What we offer: where we receive RTP and what we can send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaOffer {
    pub address: IpAddr,
    pub port: u16,
    /// In order of preference.
    pub codecs: Vec<AudioCodec>,
    /// Usually 101.
    pub telephone_event_pt: u8,
    /// Usually 20.
    pub ptime_ms: u32,
    /// SRTP keyed by SDES; `None`: plain RTP, the offer exactly as before SRTP existed.
    pub srtp: Option<SdesOffer>,
}

/// The SDES (RFC 4568) part of our offer: two `a=crypto` lines, each with its own fresh
/// master key, tag 1 `AES_CM_128_HMAC_SHA1_80` (preferred) and tag 2
/// `AES_CM_128_HMAC_SHA1_32`. The answer picks one by its tag; the key of that line
/// protects what we send (each side declares the key of its own sending direction).
///
/// `required`: the m= line says `RTP/SAVP`, and an answer without a usable key fails
/// ([`SdpError::SrtpUnavailable`]). Otherwise best-effort SRTP: `RTP/AVP` with the
/// `a=crypto` lines, which an answerer that knows SDES takes up (answering with its own
/// `a=crypto`) and one that does not ignores, answering plain RTP. That is what Asterisk,
/// FreeSWITCH and many carriers accept; RFC 4568 defines `a=crypto` for the SRTP
/// profiles only and RFC 5939 capability negotiation (`a=tcap`/`a=pcfg`) is the
/// standard way to offer both, but few trunks implement it, and a SAVP offer is
/// rejected outright by a plain-RTP peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdesOffer {
    pub required: bool,
    /// Our keys for tag 1 (`_80`) and tag 2 (`_32`).
    pub keys: [MasterKey; 2],
}

impl SdesOffer {
    /// Suites by tag (tag = index + 1).
    pub const SUITES: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// Fresh keys from the operating system's CSPRNG.
    pub fn random(required: bool) -> Result<SdesOffer, getrandom::Error> {
        Ok(SdesOffer {
            required,
            keys: [MasterKey::random()?, MasterKey::random()?],
        })
    }

    /// Our key for the crypto attribute `tag`, if we offered it.
    pub fn key(&self, tag: u32) -> Option<&MasterKey> {
        let i = usize::try_from(tag.checked_sub(1)?).ok()?;
        self.keys.get(i)
    }
}

/// The far end's SDES key from its answer: it protects what it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdesAnswer {
    /// The tag of our offer it accepted (which of our keys we use).
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
}

/// What the far end accepted: where to send RTP and in which format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaAnswer {
    pub address: IpAddr,
    pub port: u16,
    pub codec: AudioCodec,
    /// The payload type the far end uses for RFC 4733 events (any number, not only 101).
    pub telephone_event_pt: Option<u8>,
    pub ptime_ms: Option<u32>,
    /// Media is SRTP with these keys (only when we offered SDES and the answer took
    /// it up); `None`: plain RTP.
    pub srtp: Option<SdesAnswer>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("no SDP body")]
    Empty,
    #[error("no audio stream in the answer")]
    NoAudio,
    #[error("audio stream rejected (port 0)")]
    StreamRejected,
    #[error("unsupported media transport {0:?}")]
    UnsupportedTransport(String),
    #[error("no codec in common with the offer")]
    NoCommonCodec,
    #[error("no usable connection address (c=)")]
    NoConnection,
    #[error("malformed line {0:?}")]
    BadLine(String),
    /// `srtp = "required"` (or an SRTP answer) and no usable key in the answer.
    #[error("srtp_unavailable: {0}")]
    SrtpUnavailable(&'static str),
}

/// The full SDP body of our offer, CRLF line ends.
pub fn build_offer(offer: &MediaOffer, session_id: u64) -> String {
    let ip = match offer.address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let mut pts: Vec<String> = offer
        .codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    pts.push(offer.telephone_event_pt.to_string());
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\n\
         o=otpdial {sid} {sid} IN {ip} {addr}\r\n\
         s=otpdial\r\n\
         c=IN {ip} {addr}\r\n\
         t=0 0\r\n\
         m=audio {port} {proto} {pts}\r\n",
        sid = session_id,
        addr = offer.address,
        port = offer.port,
        proto = match &offer.srtp {
            Some(o) if o.required => "RTP/SAVP",
            _ => "RTP/AVP",
        },
        pts = pts.join(" "),
    );
    for c in &offer.codecs {
        let _ = write!(
            s,
            "a=rtpmap:{} {}/8000\r\n",
            c.payload_type(),
            c.encoding_name()
        );
    }
    let _ = write!(
        s,
        "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\na=ptime:{}\r\na=sendrecv\r\n",
        offer.ptime_ms,
        pt = offer.telephone_event_pt,
    );
    if let Some(o) = &offer.srtp {
        for (i, (suite, key)) in SdesOffer::SUITES.iter().zip(&o.keys).enumerate() {
            let inline = base64::engine::general_purpose::STANDARD.encode(key.concatenated());
            let _ = write!(s, "a=crypto:{} {} inline:{inline}\r\n", i + 1, suite.name());
        }
    }
    s
}

/// Our SDP `body` with only the `a=crypto` line of `tag` (none when `None`): how we
/// answer a re-INVITE once the far end has chosen. A body without `a=crypto` comes back
/// unchanged.
pub fn keep_crypto(body: &str, tag: Option<u32>) -> String {
    if !body.contains("a=crypto:") {
        return body.to_string();
    }
    body.split_inclusive('\n')
        .filter(|line| match line.strip_prefix("a=crypto:") {
            None => true,
            Some(rest) => {
                let line_tag = rest.split_whitespace().next().and_then(|t| t.parse().ok());
                tag.is_some() && line_tag == tag
            }
        })
        .collect()
}

/// `body` with the key of every SDES `inline:` replaced by `<redacted>`, for logs.
pub fn redact_keys(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.find("inline:") {
        let (before, after) = rest.split_at(at + "inline:".len());
        out.push_str(before);
        out.push_str("<redacted>");
        let end = after
            .find(|c: char| c == '|' || c == ';' || c.is_whitespace())
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// One `a=crypto:<tag> <suite> <key-params> [<session-params>]` of the answer, checked
/// against our offer: the tag must be one we offered with the same suite; one
/// `inline:` key of 16 + 14 bytes; a lifetime, if given, of at least 2^20 packets
/// (calls are far shorter); no MKI (we would have to parse it in every packet and gain
/// nothing with a single key); no session parameter that weakens SRTP
/// (`UNENCRYPTED_*`, `UNAUTHENTICATED_SRTP`, a KDR other than 0).
fn parse_crypto(value: &str, offer: &SdesOffer) -> Result<SdesAnswer, &'static str> {
    let mut parts = value.split_whitespace();
    let tag: u32 = parts
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or("malformed a=crypto tag")?;
    let suite = Suite::from_name(parts.next().unwrap_or("")).ok_or("unsupported crypto suite")?;
    let offered = usize::try_from(tag)
        .ok()
        .and_then(|t| t.checked_sub(1))
        .and_then(|i| SdesOffer::SUITES.get(i))
        .ok_or("a=crypto tag not in our offer")?;
    if *offered != suite {
        return Err("a=crypto suite differs from the offered one");
    }
    let key_params = parts.next().ok_or("a=crypto without key")?;
    if key_params.contains(';') {
        return Err("more than one SDES key (MKI) not supported");
    }
    let mut fields = key_params
        .strip_prefix("inline:")
        .ok_or("a=crypto key method is not inline")?
        .split('|');
    let encoded = fields.next().unwrap_or("");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "a=crypto key is not base64")?;
    let bytes: [u8; 30] = bytes
        .try_into()
        .map_err(|_| "a=crypto key is not 30 bytes")?;
    for field in fields {
        if field.contains(':') {
            return Err("SDES MKI not supported");
        }
        let lifetime_log2 = match field.strip_prefix("2^") {
            Some(exp) => exp.parse::<u32>().ok(),
            None => field
                .parse::<u64>()
                .ok()
                .map(|n| 63 - n.max(1).leading_zeros()),
        };
        if lifetime_log2.is_none_or(|l| l < 20) {
            return Err("SDES key lifetime too short or malformed");
        }
    }
    for param in parts {
        let weakening = param.starts_with("UNENCRYPTED_")
            || param == "UNAUTHENTICATED_SRTP"
            || (param.starts_with("KDR=") && param != "KDR=0");
        if weakening {
            return Err("SDES session parameter not supported");
        }
    }
    if offer.key(tag).is_none() {
        return Err("a=crypto tag not in our offer");
    }
    Ok(SdesAnswer {
        tag,
        suite,
        key: MasterKey::from_concatenated(&bytes),
    })
}

/// Parses the far end's answer to `offer`. Uses the first audio stream; picks the first
/// payload of its m= line that we offered; telephone-event at whatever payload type the
/// answer maps it to; media-level c= overrides session-level c=.
pub fn parse_answer(body: &str, offer: &MediaOffer) -> Result<MediaAnswer, SdpError> {
    if body.trim().is_empty() {
        return Err(SdpError::Empty);
    }
    let scanned = scan(body)?;
    let a = scanned.audio.ok_or(SdpError::NoAudio)?;
    if a.port == 0 {
        return Err(SdpError::StreamRejected);
    }
    let secure_profile = a.proto == "RTP/SAVP" || a.proto == "RTP/SAVPF";
    let plain_profile = a.proto == "RTP/AVP" || a.proto == "RTP/AVPF";
    if !(plain_profile || secure_profile && offer.srtp.is_some()) {
        return Err(SdpError::UnsupportedTransport(a.proto));
    }
    let srtp = answer_srtp(&a, offer, secure_profile)?;
    if offer.srtp.as_ref().is_some_and(|o| o.required) && !secure_profile {
        return Err(SdpError::SrtpUnavailable(
            "the answer's profile is not RTP/SAVP",
        ));
    }
    let address = a
        .conn
        .or(scanned.session_conn)
        .flatten()
        .ok_or(SdpError::NoConnection)?;
    let codec = common_codec(&a, offer)?;
    let telephone_event_pt = a.payloads.iter().copied().find(|pt| {
        a.rtpmap
            .get(pt)
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case("telephone-event"))
    });
    Ok(MediaAnswer {
        address,
        port: a.port,
        codec,
        telephone_event_pt,
        ptime_ms: a.ptime.or(scanned.session_ptime),
        srtp,
    })
}

/// What an answer's lines say about the session and its first audio stream.
struct Scanned {
    /// The session-level c= (None inside: an address we cannot use).
    session_conn: Option<Option<IpAddr>>,
    /// The session-level a=ptime.
    session_ptime: Option<u32>,
    /// The first audio m= section.
    audio: Option<AudioSection>,
}

/// Reads the lines of an answer up to the end of its first audio m= section.
fn scan(body: &str) -> Result<Scanned, SdpError> {
    let mut session_conn: Option<Option<IpAddr>> = None;
    let mut session_ptime: Option<u32> = None;
    // State of the first audio m= section, once seen.
    let mut audio: Option<AudioSection> = None;
    let mut in_other_media = false;

    for raw in body.lines() {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(SdpError::BadLine(line.to_string()));
        };
        match kind {
            "m" => {
                if audio.is_some() {
                    // Only the first audio stream matters; stop at the next m= line.
                    break;
                }
                let mut parts = value.split_whitespace();
                let media = parts.next().unwrap_or("");
                if media != "audio" {
                    in_other_media = true;
                    continue;
                }
                in_other_media = false;
                let port: u16 = parts
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| SdpError::BadLine(line.to_string()))?;
                let proto = parts.next().unwrap_or("").to_string();
                let payloads = parts.filter_map(|p| p.parse::<u8>().ok()).collect();
                audio = Some(AudioSection {
                    port,
                    proto,
                    payloads,
                    conn: None,
                    rtpmap: HashMap::new(),
                    ptime: None,
                    crypto: Vec::new(),
                });
            }
            "c" => {
                let addr = parse_connection(value);
                match audio.as_mut() {
                    Some(a) => a.conn = Some(addr),
                    None if !in_other_media => session_conn = Some(addr),
                    None => {}
                }
            }
            "a" => {
                let (attr, val) = value.split_once(':').unwrap_or((value, ""));
                match (attr, audio.as_mut()) {
                    ("rtpmap", Some(a)) => {
                        if let Some((pt, enc)) = parse_rtpmap(val) {
                            a.rtpmap.insert(pt, enc);
                        }
                    }
                    ("ptime", Some(a)) => a.ptime = val.trim().parse().ok(),
                    ("crypto", Some(a)) => a.crypto.push(val.trim().to_string()),
                    ("ptime", None) if !in_other_media => session_ptime = val.trim().parse().ok(),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    Ok(Scanned {
        session_conn,
        session_ptime,
        audio,
    })
}

/// The SRTP keys of the answer when we offered SDES: the first `a=crypto` that fits
/// our offer. None when we offered none, or when it was optional and the far end
/// answered plain RTP.
fn answer_srtp(
    a: &AudioSection,
    offer: &MediaOffer,
    secure_profile: bool,
) -> Result<Option<SdesAnswer>, SdpError> {
    Ok(match &offer.srtp {
        None => None,
        Some(sdes) => {
            // The first line that fits our offer (RFC 4568 answers carry one).
            let mut usable = Err("no a=crypto in the answer");
            for line in &a.crypto {
                usable = parse_crypto(line, sdes);
                if usable.is_ok() {
                    break;
                }
            }
            match usable {
                Ok(k) => Some(k),
                Err(why) if sdes.required || secure_profile => {
                    return Err(SdpError::SrtpUnavailable(why));
                }
                // Best effort: the far end answered plain RTP.
                Err(_) => None,
            }
        }
    })
}

/// The first codec of the answer's payload list that we offered (static payload types
/// 0 and 8 without an rtpmap count).
fn common_codec(a: &AudioSection, offer: &MediaOffer) -> Result<AudioCodec, SdpError> {
    a.payloads
        .iter()
        .filter_map(|pt| match a.rtpmap.get(pt) {
            Some((name, clock)) => AudioCodec::from_encoding(name, Some(*clock)),
            None => match pt {
                0 => Some(AudioCodec::Pcmu),
                8 => Some(AudioCodec::Pcma),
                _ => None,
            },
        })
        .find(|c| offer.codecs.contains(c))
        .ok_or(SdpError::NoCommonCodec)
}

struct AudioSection {
    port: u16,
    proto: String,
    payloads: Vec<u8>,
    conn: Option<Option<IpAddr>>,
    rtpmap: HashMap<u8, (String, u32)>,
    ptime: Option<u32>,
    /// Values of the `a=crypto` lines.
    crypto: Vec<String>,
}

/// `IN IP4 192.0.2.1[/ttl]` -> address; a host name yields None (we do no DNS here).
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_whitespace();
    if parts.next()? != "IN" {
        return None;
    }
    let _family = parts.next()?;
    parts.next()?.split('/').next()?.parse().ok()
}

/// `96 telephone-event/8000[/channels]` -> (96, ("telephone-event", 8000)).
fn parse_rtpmap(val: &str) -> Option<(u8, (String, u32))> {
    let (pt, enc) = val.trim().split_once(char::is_whitespace)?;
    let pt: u8 = pt.parse().ok()?;
    let mut it = enc.trim().split('/');
    let name = it.next()?.to_string();
    let clock = it.next()?.parse().ok()?;
    Some((pt, (name, clock)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn offer() -> MediaOffer {
        MediaOffer {
            address: "192.0.2.10".parse().unwrap(),
            port: 40000,
            codecs: vec![AudioCodec::Pcmu, AudioCodec::Pcma],
            telephone_event_pt: 101,
            ptime_ms: 20,
            srtp: None,
        }
    }

    #[test]
    fn offer_text() {
        let s = build_offer(&offer(), 42);
        assert_eq!(
            s,
            "v=0\r\no=otpdial 42 42 IN IP4 192.0.2.10\r\ns=otpdial\r\nc=IN IP4 192.0.2.10\r\n\
             t=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
             a=ptime:20\r\na=sendrecv\r\n"
        );
        // Our own offer is a valid answer to itself.
        let a = parse_answer(&s, &offer()).unwrap();
        assert_eq!(a.codec, AudioCodec::Pcmu);
        assert_eq!(a.telephone_event_pt, Some(101));
    }

    #[test]
    fn answer_only_pcma_te96_ptime30() {
        let body =
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                    m=audio 30000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\n\
                    a=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=ptime:30\r\n";
        let a = parse_answer(body, &offer()).unwrap();
        assert_eq!(
            a,
            MediaAnswer {
                address: "198.51.100.7".parse().unwrap(),
                port: 30000,
                codec: AudioCodec::Pcma,
                telephone_event_pt: Some(96),
                ptime_ms: Some(30),
                srtp: None,
            }
        );
    }

    #[test]
    fn media_level_connection_and_static_pt() {
        let body = "v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nc=IN IP4 203.0.113.1\nt=0 0\n\
                    m=audio 5004 RTP/AVP 18 0\nc=IN IP4 203.0.113.2\n";
        let a = parse_answer(body, &offer()).unwrap();
        assert_eq!(a.address, "203.0.113.2".parse::<IpAddr>().unwrap());
        assert_eq!(a.codec, AudioCodec::Pcmu);
        assert_eq!(a.telephone_event_pt, None);
        assert_eq!(a.ptime_ms, None);
    }

    #[test]
    fn rejections() {
        let port0 = "v=0\r\nc=IN IP4 198.51.100.7\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(parse_answer(port0, &offer()), Err(SdpError::StreamRejected));
        let g729 = "v=0\r\nc=IN IP4 198.51.100.7\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(parse_answer(g729, &offer()), Err(SdpError::NoCommonCodec));
        let mut only_pcma = offer();
        only_pcma.codecs = vec![AudioCodec::Pcma];
        let pcmu = "v=0\r\nc=IN IP4 198.51.100.7\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(parse_answer(pcmu, &only_pcma), Err(SdpError::NoCommonCodec));
        let noc = "v=0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(parse_answer(noc, &offer()), Err(SdpError::NoConnection));
        assert_eq!(parse_answer("", &offer()), Err(SdpError::Empty));
        assert_eq!(parse_answer("v=0\r\n", &offer()), Err(SdpError::NoAudio));
        assert!(parse_answer("garbage", &offer()).is_err());
    }

    fn sdes_offer(required: bool) -> MediaOffer {
        MediaOffer {
            srtp: Some(SdesOffer {
                required,
                keys: [
                    MasterKey::from_concatenated(&[1; 30]),
                    MasterKey::from_concatenated(&[2; 30]),
                ],
            }),
            ..offer()
        }
    }

    /// 30 bytes of 0x33, base64.
    const THEIR_KEY: &str = "MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMz";

    fn srtp_answer(proto: &str, crypto: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             m=audio 30000 {proto} 8 101\r\na=rtpmap:101 telephone-event/8000\r\n{crypto}"
        )
    }

    #[test]
    fn sdes_offer_text_per_mode() {
        let required = build_offer(&sdes_offer(true), 42);
        assert!(
            required.contains("m=audio 40000 RTP/SAVP 0 8 101\r\n"),
            "{required}"
        );
        let k1 = base64::engine::general_purpose::STANDARD.encode([1u8; 30]);
        let k2 = base64::engine::general_purpose::STANDARD.encode([2u8; 30]);
        assert!(required.ends_with(&format!(
            "a=sendrecv\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{k1}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{k2}\r\n"
        )));
        // After the answer, re-INVITEs get only the chosen line.
        let kept = keep_crypto(&required, Some(2));
        assert!(kept.ends_with(&format!(
            "a=sendrecv\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{k2}\r\n"
        )));
        assert!(!keep_crypto(&required, None).contains("crypto"));
        let plain = build_offer(&offer(), 42);
        assert_eq!(keep_crypto(&plain, None), plain);
        let optional = build_offer(&sdes_offer(false), 42);
        assert!(
            optional.contains("m=audio 40000 RTP/AVP 0 8 101\r\n"),
            "{optional}"
        );
        assert!(optional.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        // Off: not a byte of it (offer_text pins the whole body).
        assert!(!build_offer(&offer(), 42).contains("crypto"));
        // Logs can carry the body with the keys blanked.
        let red = redact_keys(&required);
        assert!(!red.contains(&k1) && !red.contains(&k2), "{red}");
        assert_eq!(red.matches("inline:<redacted>\r\n").count(), 2, "{red}");
        assert_eq!(
            redact_keys("a=crypto:1 X inline:abc|2^31 KDR=0"),
            "a=crypto:1 X inline:<redacted>|2^31 KDR=0"
        );
    }

    #[test]
    fn sdes_answer_is_taken_up_with_its_tag_and_key() {
        for required in [true, false] {
            let body = srtp_answer(
                if required { "RTP/SAVP" } else { "RTP/AVP" },
                &format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{THEIR_KEY}|2^31\r\n"),
            );
            let a = parse_answer(&body, &sdes_offer(required)).unwrap();
            assert_eq!(
                a.srtp,
                Some(SdesAnswer {
                    tag: 2,
                    suite: Suite::AesCm128HmacSha1_32,
                    key: MasterKey::from_concatenated(&[0x33; 30]),
                })
            );
        }
        // Unknown lines first, then one that fits.
        let body = srtp_answer(
            "RTP/SAVP",
            &format!(
                "a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n\
                 a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY} KDR=0 WSH=128\r\n"
            ),
        );
        let a = parse_answer(&body, &sdes_offer(true)).unwrap();
        assert_eq!(a.srtp.map(|s| s.tag), Some(1));
    }

    #[test]
    fn unusable_sdes_answers() {
        let cases = [
            ("RTP/SAVP", String::new(), "no a=crypto in the answer"),
            (
                "RTP/SAVP",
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{THEIR_KEY}\r\n"),
                "a=crypto suite differs from the offered one",
            ),
            (
                "RTP/SAVP",
                format!("a=crypto:1 AEAD_AES_256_GCM inline:{THEIR_KEY}\r\n"),
                "unsupported crypto suite",
            ),
            (
                "RTP/SAVP",
                format!("a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n"),
                "a=crypto tag not in our offer",
            ),
            (
                "RTP/SAVP",
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:MzMz\r\n".to_string(),
                "a=crypto key is not 30 bytes",
            ),
            (
                "RTP/SAVP",
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!\r\n".to_string(),
                "a=crypto key is not base64",
            ),
            (
                "RTP/SAVP",
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}|2^20|1:4\r\n"),
                "SDES MKI not supported",
            ),
            (
                "RTP/SAVP",
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}|1024\r\n"),
                "SDES key lifetime too short or malformed",
            ),
            (
                "RTP/SAVP",
                format!(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY};inline:{THEIR_KEY}\r\n"
                ),
                "more than one SDES key (MKI) not supported",
            ),
            (
                "RTP/SAVP",
                format!(
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY} UNENCRYPTED_SRTP\r\n"
                ),
                "SDES session parameter not supported",
            ),
            (
                "RTP/SAVP",
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY} KDR=10\r\n"),
                "SDES session parameter not supported",
            ),
            (
                "RTP/AVP",
                format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n"),
                "the answer's profile is not RTP/SAVP",
            ),
            ("RTP/AVP", String::new(), "no a=crypto in the answer"),
        ];
        for (proto, crypto, why) in &cases {
            let body = srtp_answer(proto, crypto);
            assert_eq!(
                parse_answer(&body, &sdes_offer(true)),
                Err(SdpError::SrtpUnavailable(why)),
                "{body}"
            );
        }
        assert_eq!(
            SdpError::SrtpUnavailable("x").to_string(),
            "srtp_unavailable: x"
        );
        // Optional: a plain answer, or one whose key we cannot use, is plain RTP...
        for (_, crypto, _) in cases.iter().filter(|c| c.0 == "RTP/SAVP") {
            let a = parse_answer(&srtp_answer("RTP/AVP", crypto), &sdes_offer(false)).unwrap();
            assert_eq!(a.srtp, None);
        }
        // ...but an SRTP profile without a usable key is no call at all.
        assert!(matches!(
            parse_answer(&srtp_answer("RTP/SAVP", ""), &sdes_offer(false)),
            Err(SdpError::SrtpUnavailable(_))
        ));
        // SRTP never offered: an SRTP answer is refused as before, a=crypto ignored.
        assert_eq!(
            parse_answer(&srtp_answer("RTP/SAVP", ""), &offer()),
            Err(SdpError::UnsupportedTransport("RTP/SAVP".into()))
        );
        let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n");
        let a = parse_answer(&srtp_answer("RTP/AVP", &crypto), &offer()).unwrap();
        assert_eq!(a.srtp, None);
    }
}
