//! SDP offer/answer (RFC 3264/4566) for the one audio stream a call has: we always offer,
//! the far end answers. Pure text in, values out; depends on nothing but std.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;

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
         m=audio {port} RTP/AVP {pts}\r\n",
        sid = session_id,
        addr = offer.address,
        port = offer.port,
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
    s
}

/// Parses the far end's answer to `offer`. Uses the first audio stream; picks the first
/// payload of its m= line that we offered; telephone-event at whatever payload type the
/// answer maps it to; media-level c= overrides session-level c=.
pub fn parse_answer(body: &str, offer: &MediaOffer) -> Result<MediaAnswer, SdpError> {
    if body.trim().is_empty() {
        return Err(SdpError::Empty);
    }
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
                    ("ptime", None) if !in_other_media => session_ptime = val.trim().parse().ok(),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    let a = audio.ok_or(SdpError::NoAudio)?;
    if a.port == 0 {
        return Err(SdpError::StreamRejected);
    }
    if a.proto != "RTP/AVP" && a.proto != "RTP/AVPF" {
        return Err(SdpError::UnsupportedTransport(a.proto));
    }
    let address = a
        .conn
        .or(session_conn)
        .flatten()
        .ok_or(SdpError::NoConnection)?;
    let codec = a
        .payloads
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
        .ok_or(SdpError::NoCommonCodec)?;
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
        ptime_ms: a.ptime.or(session_ptime),
    })
}

struct AudioSection {
    port: u16,
    proto: String,
    payloads: Vec<u8>,
    conn: Option<Option<IpAddr>>,
    rtpmap: HashMap<u8, (String, u32)>,
    ptime: Option<u32>,
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
}
