//! The entry point of every fuzz target, shared by the fuzz binaries
//! (`fuzz_targets/*.rs`, under libFuzzer) and by the main crate's corpus replay test
//! (`tests/it/fuzz_corpus.rs`, on the stable compiler), so both feed the committed
//! corpora and regressions through exactly the same code. Each must return, never
//! panic, whatever the bytes.
//!
//! Plain Rust, no libFuzzer: included with `#[path]` from both places.
#![allow(dead_code)] // each fuzz binary uses one entry

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use otpdial::config::Settings;
use otpdial::media::dtmf::{RtpInput, RtpKeyInput, TelephoneEvent};
use otpdial::media::rtcp;
use otpdial::sip::sdp::{self, AudioCodec, MediaOffer};

/// A target's entry point: takes any bytes, must not panic.
pub(crate) type Entry = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/corpus/` and
/// `fuzz/regressions/`).
pub(crate) const TARGETS: [(&str, Entry); 5] = [
    ("parse_message", parse_message),
    ("sdp_answer", sdp_answer),
    ("rtp_receive", rtp_receive),
    ("wav_phrase", wav_phrase),
    ("config_toml", config_toml),
];

/// A SIP datagram or stream message, as the user agent parses every one it receives.
pub(crate) fn parse_message(data: &[u8]) {
    let _ = otpdial::sip::parse_message(data);
}

/// An SDP answer body against our usual offer and a PCMA-only one. An accepted
/// answer must name a real port and a codec we offered.
pub(crate) fn sdp_answer(data: &[u8]) {
    let body = String::from_utf8_lossy(data);
    let both = MediaOffer {
        address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        port: 40000,
        codecs: vec![AudioCodec::Pcmu, AudioCodec::Pcma],
        telephone_event_pt: 101,
        ptime_ms: 20,
        srtp: None,
    };
    let pcma_only = MediaOffer {
        codecs: vec![AudioCodec::Pcma],
        ..both.clone()
    };
    // SDES with fixed keys (the fuzzer needs determinism, not secrecy).
    let key = otpdial::media::srtp::MasterKey::from_concatenated(&[7; 30]);
    let sdes = |required| sdp::SdesOffer {
        required,
        keys: [key.clone(), key.clone()],
    };
    let srtp_required = MediaOffer {
        srtp: Some(sdes(true)),
        ..both.clone()
    };
    let srtp_optional = MediaOffer {
        srtp: Some(sdes(false)),
        ..both.clone()
    };
    for offer in [&both, &pcma_only, &srtp_required, &srtp_optional] {
        if let Ok(answer) = sdp::parse_answer(&body, offer) {
            assert_ne!(answer.port, 0, "a rejected stream was accepted");
            assert!(
                offer.codecs.contains(&answer.codec),
                "a codec we never offered"
            );
            match &offer.srtp {
                None => assert!(answer.srtp.is_none(), "SRTP we never offered"),
                Some(o) if o.required => {
                    assert!(
                        answer.srtp.is_some(),
                        "required SRTP accepted without a key"
                    )
                }
                Some(_) => {}
            }
        }
    }
}

/// Datagrams arriving on a call's RTP and RTCP ports. Byte 0 picks the negotiated
/// telephone-event payload type (bit 7 set: none, so in-band detection runs); the rest
/// is a sequence of datagrams, each a big-endian u16 length and that many bytes (the
/// last one cut short by the end of the input). Every datagram goes through the RTP
/// receive path of one call (stateful, as in the pacer), the RTCP check and the
/// RFC 4733 payload parser.
pub(crate) fn rtp_receive(data: &[u8]) {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let telephone_event_pt = (config & 0x80 == 0).then_some(config & 0x7f);
    let mut call = RtpKeyInput::new(telephone_event_pt);
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        rest = after;
        if let RtpInput::Media { key: Some(k) } = call.on_datagram(datagram) {
            assert!("0123456789*#ABCD".contains(k), "key {k:?}");
        }
        let _ = rtcp::is_rtcp(datagram);
        let _ = TelephoneEvent::parse(datagram);
    }
}

/// One prompt phrase's WAV file, as a pack load decodes it. A decoded phrase is never
/// empty and never longer than a minute at 8 kHz (plus the resampler's slack).
pub(crate) fn wav_phrase(data: &[u8]) {
    if let Ok(pcm) = otpdial::media::prompts::decode_wav(Path::new("fuzz.wav"), data) {
        assert!(!pcm.is_empty(), "an empty phrase was accepted");
        assert!(pcm.len() <= 61 * 8000, "{} samples", pcm.len());
    }
}

/// A config file's text: `Settings::from_toml` must answer Ok or Err, never panic.
pub(crate) fn config_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Settings::from_toml(text);
    }
}
