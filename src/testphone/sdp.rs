//! The test phone's SDP: reads an offer just enough to pick a codec and find where to
//! send, and writes its fixed-shape answer. Not a general SDP parser.

use std::net::{IpAddr, SocketAddr};

use crate::media::G711;

/// What the phone takes from an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    /// First codec of the offer's audio m-line that the phone supports.
    pub codec: G711,
    /// Payload type the offer uses for it (static 0/8, or a dynamic one by rtpmap).
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, if offered.
    pub telephone_event: Option<u8>,
    /// Where the offerer receives RTP.
    pub rtp: SocketAddr,
}

/// Why an offer cannot be answered (the phone replies 488).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// No `m=audio` line.
    #[error("no audio m-line")]
    NoAudio,
    /// No usable connection address.
    #[error("no IPv4/IPv6 connection address")]
    NoAddress,
    /// None of PCMU/PCMA offered.
    #[error("no PCMU or PCMA in the offer")]
    NoCodec,
}

/// Reads an SDP offer.
pub fn parse_offer(sdp: &str) -> Result<Offer, OfferError> {
    let mut session_addr: Option<IpAddr> = None;
    let mut media_addr: Option<IpAddr> = None;
    let mut audio: Option<(u16, Vec<u8>)> = None;
    let mut rtpmap: Vec<(u8, String)> = Vec::new();
    let mut in_audio = false;
    let mut seen_audio = false;

    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            // Only the first audio stream counts; later m-lines end its section.
            in_audio = !seen_audio && m.starts_with("audio ");
            if in_audio {
                seen_audio = true;
                let mut parts = m.split_whitespace().skip(1);
                let port = parts.next().and_then(|p| p.split('/').next()?.parse().ok());
                let _proto = parts.next();
                let pts = parts.filter_map(|p| p.parse().ok()).collect();
                if let Some(port) = port {
                    audio = Some((port, pts));
                }
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let addr = c
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.split('/').next()?.parse().ok());
            if in_audio {
                media_addr = addr;
            } else if !seen_audio {
                session_addr = addr;
            }
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            if in_audio {
                let mut parts = map.split_whitespace();
                if let (Some(Ok(pt)), Some(enc)) = (parts.next().map(str::parse), parts.next()) {
                    rtpmap.push((pt, enc.to_ascii_lowercase()));
                }
            }
        }
    }

    let (port, pts) = audio.ok_or(OfferError::NoAudio)?;
    let ip = media_addr.or(session_addr).ok_or(OfferError::NoAddress)?;
    let encoding = |pt: u8| {
        rtpmap
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, e)| e.as_str())
    };
    let codec_of = |pt: u8| match encoding(pt) {
        Some("pcmu/8000") | Some("pcmu/8000/1") => Some(G711::Ulaw),
        Some("pcma/8000") | Some("pcma/8000/1") => Some(G711::Alaw),
        Some(_) => None,
        None => G711::from_payload_type(pt), // static types need no rtpmap
    };
    let (payload_type, codec) = pts
        .iter()
        .find_map(|&pt| codec_of(pt).map(|c| (pt, c)))
        .ok_or(OfferError::NoCodec)?;
    let telephone_event = pts
        .iter()
        .copied()
        .find(|&pt| encoding(pt).is_some_and(|e| e.starts_with("telephone-event/8000")));
    Ok(Offer {
        codec,
        payload_type,
        telephone_event,
        rtp: SocketAddr::new(ip, port),
    })
}

/// The phone's answer: the chosen codec (and telephone-event if offered), receive-only
/// in spirit but `sendrecv` so that gateways which wait for media direction play.
pub fn answer(offer: &Offer, local_rtp: SocketAddr, session_id: u64) -> String {
    let ip = local_rtp.ip();
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let pt = offer.payload_type;
    let mut fmts = pt.to_string();
    let mut attrs = format!("a=rtpmap:{pt} {}/8000\r\n", offer.codec.encoding_name());
    if let Some(te) = offer.telephone_event {
        fmts.push_str(&format!(" {te}"));
        attrs.push_str(&format!(
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n"
        ));
    }
    format!(
        "v=0\r\n\
         o=otpdial-testphone {session_id} {session_id} IN {family} {ip}\r\n\
         s=otpdial test phone\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP {fmts}\r\n\
         {attrs}\
         a=ptime:20\r\n\
         a=sendrecv\r\n",
        port = local_rtp.port()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

    #[test]
    fn picks_first_supported_codec() {
        let o = parse_offer(OFFER).unwrap();
        assert_eq!(o.codec, G711::Alaw);
        assert_eq!(o.payload_type, 8);
        assert_eq!(o.telephone_event, Some(101));
        assert_eq!(o.rtp, "127.0.0.1:40000".parse().unwrap());
    }

    #[test]
    fn static_types_without_rtpmap_and_unknown_codecs() {
        let o = parse_offer("c=IN IP4 127.0.0.2\nm=audio 5000 RTP/AVP 18 0\n").unwrap();
        assert_eq!(
            (o.codec, o.payload_type, o.telephone_event),
            (G711::Ulaw, 0, None)
        );
        assert_eq!(
            parse_offer("c=IN IP4 1.2.3.4\nm=audio 5000 RTP/AVP 18 9\n"),
            Err(OfferError::NoCodec)
        );
        assert_eq!(parse_offer("c=IN IP4 1.2.3.4\n"), Err(OfferError::NoAudio));
        assert_eq!(
            parse_offer("m=audio 5000 RTP/AVP 0\n"),
            Err(OfferError::NoAddress)
        );
    }

    #[test]
    fn answer_names_codec_and_port() {
        let o = parse_offer(OFFER).unwrap();
        let a = answer(&o, "127.0.0.1:41000".parse().unwrap(), 7);
        assert!(a.contains("m=audio 41000 RTP/AVP 8 101\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:8 PCMA/8000\r\n"));
        assert!(a.contains("c=IN IP4 127.0.0.1\r\n"));
        // Our own parser accepts what we write.
        assert_eq!(parse_offer(&a).unwrap().codec, G711::Alaw);
    }
}
