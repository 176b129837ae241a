//! Media: prompt packs, G.711, the call script and RTP playout.
//!
//! - [`g711`]: sample-level µ-law/A-law helpers (on `audio-codec-algorithms`).
//! - [`prompts`]: prompt packs loaded once (hound WAV) and pre-encoded into 160-byte frames.
//! - [`script`]: what to say when in a call; pure code, no I/O, no clock.
//! - [`cursor`]: where a call is in its script, and the key-gate rules; pure code.
//! - [`rtp`]: RTP packetisation of one stream (rtp-rs).
//! - [`rtcp`]: RTCP sender reports and BYE (RFC 3550).
//! - [`srtp`]: SRTP and SRTCP (RFC 3711), AES-CM with HMAC-SHA1; pure code.
//! - [`dtmf`]: key presses from RFC 4733 telephone-events and in-band tones (Goertzel).
//! - [`pacer`]: the one thread that sends every call's packets on absolute deadlines;
//!   its streams ([`pacer::stream`]) are pure values, its thread the only I/O.
//!
//! Depends on std, tokio (only for the event channel to the async side) and the codec
//! crates; knows nothing of SIP, HTTP or the store.

pub mod cursor;
pub mod dtmf;
pub mod g711;
pub mod pacer;
pub mod prompts;
pub mod rtcp;
pub mod rtp;
pub mod script;
pub mod srtp;

pub use pacer::{
    rtcp_socket_beside, Pacer, PacerOptions, PacerStats, Playout, PlayoutEvent, PlayoutSpec,
};
pub use prompts::{check_phrase, PhraseCheck, PromptError, PromptLibrary, PromptPack};
pub use script::{CallScript, Keys, ScriptItem};

/// Samples per RTP packet: 20 ms at 8 kHz, which is also the RTP timestamp step.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame (one RTP packet).
pub const FRAME_DURATION: std::time::Duration = std::time::Duration::from_millis(20);
/// Sample rate of everything in this module.
pub const SAMPLE_RATE: u32 = 8000;

/// The two G.711 laws (RFC 3551 static payload types PCMU = 0, PCMA = 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum G711 {
    /// µ-law, PCMU.
    Ulaw,
    /// A-law, PCMA.
    Alaw,
}

impl G711 {
    /// RFC 3551 static payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Ulaw => 0,
            G711::Alaw => 8,
        }
    }

    /// The law of a static payload type, if it is one of the two.
    pub fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            0 => Some(G711::Ulaw),
            8 => Some(G711::Alaw),
            _ => None,
        }
    }

    /// SDP encoding name (`a=rtpmap:0 PCMU/8000`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711::Ulaw => "PCMU",
            G711::Alaw => "PCMA",
        }
    }

    /// The byte that decodes to digital silence in this law.
    pub fn silence(self) -> u8 {
        match self {
            G711::Ulaw => g711::ULAW_SILENCE,
            G711::Alaw => g711::ALAW_SILENCE,
        }
    }
}

/// One prerecorded phrase of a prompt pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phrase {
    /// A spoken digit, 0..=9, as said inside a group (non-final intonation). Other
    /// values have no audio (empty frames/PCM).
    Digit(u8),
    /// The same digit as said at the end of a group or of the code (final, falling
    /// intonation): `5-final.wav`. A pack without that file plays [`Phrase::Digit`].
    FinalDigit(u8),
    /// "Your verification code is".
    Intro,
    /// "I repeat".
    Repeat,
    /// "Goodbye".
    Outro,
    /// "To hear your code, press" (followed by the digit to press: `require_keypress`).
    PressKey,
    /// "To hear your code, enter the two digits shown on your screen" (`bind_digits`).
    /// Optional in a pack (`bind.wav`): without it the pack cannot serve `bind_digits`.
    Bind,
}

impl Phrase {
    /// Every phrase a pack must have, in a fixed order (the pack's storage order).
    pub const ALL: [Phrase; 14] = [
        Phrase::Digit(0),
        Phrase::Digit(1),
        Phrase::Digit(2),
        Phrase::Digit(3),
        Phrase::Digit(4),
        Phrase::Digit(5),
        Phrase::Digit(6),
        Phrase::Digit(7),
        Phrase::Digit(8),
        Phrase::Digit(9),
        Phrase::Intro,
        Phrase::Repeat,
        Phrase::Outro,
        Phrase::PressKey,
    ];

    /// The final forms of the ten digits. Optional in a pack: each falls back to the
    /// plain [`Phrase::Digit`] when its file is missing.
    pub const FINAL_DIGITS: [Phrase; 10] = [
        Phrase::FinalDigit(0),
        Phrase::FinalDigit(1),
        Phrase::FinalDigit(2),
        Phrase::FinalDigit(3),
        Phrase::FinalDigit(4),
        Phrase::FinalDigit(5),
        Phrase::FinalDigit(6),
        Phrase::FinalDigit(7),
        Phrase::FinalDigit(8),
        Phrase::FinalDigit(9),
    ];

    /// The digit a phrase says, in either form; `None` for other phrases.
    pub fn digit(self) -> Option<u8> {
        match self {
            Phrase::Digit(d) | Phrase::FinalDigit(d) if d <= 9 => Some(d),
            _ => None,
        }
    }

    /// Short name used in reports: `digit 5`, `digit 5 final`, `intro`, ...
    pub fn name(self) -> String {
        match self {
            Phrase::Digit(d) => format!("digit {d}"),
            Phrase::FinalDigit(d) => format!("digit {d} final"),
            Phrase::Intro => "intro".to_owned(),
            Phrase::Repeat => "repeat".to_owned(),
            Phrase::Outro => "outro".to_owned(),
            Phrase::PressKey => "press-key".to_owned(),
            Phrase::Bind => "bind".to_owned(),
        }
    }

    /// Index into [`Phrase::ALL`]; `None` for a digit above 9 and for the optional
    /// phrases (final forms, bind), which the pack keeps apart.
    pub(crate) fn index(self) -> Option<usize> {
        match self {
            Phrase::Digit(d) if d <= 9 => Some(usize::from(d)),
            Phrase::Digit(_) | Phrase::FinalDigit(_) | Phrase::Bind => None,
            Phrase::Intro => Some(10),
            Phrase::Repeat => Some(11),
            Phrase::Outro => Some(12),
            Phrase::PressKey => Some(13),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn phrase_index_matches_all_order() {
        for (i, p) in Phrase::ALL.iter().enumerate() {
            assert_eq!(p.index(), Some(i));
        }
        assert_eq!(Phrase::Digit(10).index(), None);
        assert_eq!(Phrase::FinalDigit(3).index(), None);
        assert_eq!(Phrase::FinalDigit(3).digit(), Some(3));
        assert_eq!(Phrase::FinalDigit(12).digit(), None);
        assert_eq!(Phrase::Intro.digit(), None);
    }

    #[test]
    fn payload_types() {
        assert_eq!(G711::Ulaw.payload_type(), 0);
        assert_eq!(G711::Alaw.payload_type(), 8);
        assert_eq!(G711::from_payload_type(8), Some(G711::Alaw));
        assert_eq!(G711::from_payload_type(18), None);
    }
}
