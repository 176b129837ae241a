//! DTMF input from the media path: RFC 4733 telephone-events and in-band tones.
//!
//! Pure code, no I/O: the pacer feeds it the payloads it reads from a call's RTP socket.
//! SIP INFO key presses arrive through the SIP layer instead and meet these at the
//! playout ([`super::Playout::key`]).
//!
//! - [`TelephoneEventReceiver`]: one key press per RFC 4733 event. A sender repeats each
//!   event packet while the key is held and sends its End packet three times, all with
//!   the same RTP timestamp (the event's start), so the timestamp is the event's identity.
//! - [`InbandDetector`]: Goertzel filters at the eight DTMF frequencies over each 20 ms
//!   frame of decoded G.711, for trunks that send neither telephone-events nor SIP INFO.

/// RFC 4733 §3.2 event codes 0..=15 as characters (0-9, *, #, A-D).
const EVENT_CHARS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// The DTMF character of an RFC 4733 event code, if it is a DTMF event.
pub fn event_char(event: u8) -> Option<char> {
    EVENT_CHARS.get(usize::from(event)).copied()
}

/// One RFC 4733 named-event payload (§2.3): 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code (0..=15 are the DTMF keys).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Volume, 0..=63 as -dBm0.
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first event block of a payload. Redundant blocks (RFC 4733 §2.5.1.5,
    /// several events in one packet) repeat earlier events, which the timestamp
    /// de-duplication already covers, so only the first is read.
    pub fn parse(payload: &[u8]) -> Option<TelephoneEvent> {
        let b = payload.get(0..4)?;
        Some(TelephoneEvent {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }
}

/// Turns a stream of telephone-event packets into key presses, each reported once.
#[derive(Clone, Copy, Debug, Default)]
pub struct TelephoneEventReceiver {
    /// RTP timestamp of the last event reported: its repeats and End packets carry it.
    last: Option<u32>,
}

impl TelephoneEventReceiver {
    /// Feeds one packet (RTP timestamp and payload) of the negotiated telephone-event
    /// payload type. Returns the key on the first packet of a new event: reacting to the
    /// start, not the End, so a long press restarts the reading at once.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<char> {
        let ev = TelephoneEvent::parse(payload)?;
        let key = event_char(ev.event)?;
        if self.last == Some(timestamp) {
            return None; // a repeat or End retransmission of the event already reported
        }
        self.last = Some(timestamp);
        Some(key)
    }
}

/// What one datagram that arrived on a call's RTP port turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpInput {
    /// Not media of this call: not RTP (STUN, garbage), RTCP sent to the RTP port (its
    /// packet types read as payload types 72-76), comfort noise, strays. Never latch
    /// onto its source.
    Ignored,
    /// A G.711 or telephone-event packet of this call, with the key it completed, if any.
    Media {
        /// A key press heard in this packet.
        key: Option<char>,
    },
}

/// Key presses from the datagrams a call receives on its RTP port: RFC 4733 events at
/// the negotiated payload type, otherwise in-band tones in the G.711 audio. Pure code:
/// the pacer feeds it every datagram it reads, whoever sent it.
#[derive(Clone, Copy, Debug)]
pub struct RtpKeyInput {
    telephone_event_pt: Option<u8>,
    telephone_events: TelephoneEventReceiver,
    /// In-band detection, only while no telephone-event has arrived.
    inband: Option<InbandDetector>,
}

impl RtpKeyInput {
    /// For a call that negotiated telephone-events at `telephone_event_pt` (in-band
    /// detection only when it did not).
    pub fn new(telephone_event_pt: Option<u8>) -> RtpKeyInput {
        RtpKeyInput {
            telephone_event_pt,
            telephone_events: TelephoneEventReceiver::default(),
            inband: telephone_event_pt.is_none().then(InbandDetector::default),
        }
    }

    /// The negotiated telephone-event payload type, if any.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.telephone_event_pt
    }

    /// Reads one received datagram.
    pub fn on_datagram(&mut self, data: &[u8]) -> RtpInput {
        let Ok(p) = rtp_rs::RtpReader::new(data) else {
            return RtpInput::Ignored;
        };
        let pt = p.payload_type();
        let law = super::G711::from_payload_type(pt);
        if Some(pt) == self.telephone_event_pt {
            // The far end sends RFC 4733: in-band tones (if any) would double the keys.
            self.inband = None;
            let key = self.telephone_events.on_packet(p.timestamp(), p.payload());
            return RtpInput::Media { key };
        }
        let Some(law) = law else {
            return RtpInput::Ignored;
        };
        let key = self.inband.as_mut().and_then(|det| {
            let payload = p.payload();
            let mut pcm = [0i16; 3 * super::FRAME_SAMPLES];
            let n = payload.len().min(pcm.len());
            super::g711::decode_into(law, &payload[..n], &mut pcm[..n]);
            det.on_frame(&pcm[..n])
        });
        RtpInput::Media { key }
    }
}

/// Goertzel-based DTMF detector over 8 kHz audio in 20 ms frames.
///
/// A key is reported when two consecutive frames show the same row and column tones,
/// and again only after a frame without a tone (ITU-T Q.24: tones of 40 ms and more must
/// be accepted, pauses of 40 ms recognised; at 20 ms frames two frames are the minimum).
#[derive(Clone, Copy, Debug, Default)]
pub struct InbandDetector {
    /// Key seen in the previous frame.
    candidate: Option<char>,
    /// The key reported and still held: not reported again until it stops.
    held: Option<char>,
}

/// Row (low group) and column (high group) frequencies, Hz.
const ROWS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Quietest tone accepted: about -30 dBm0 per tone, as mean power of the frame (a sine
/// of amplitude A has power A²/2; A = 1000 of 32767).
const MIN_TONE_POWER: f32 = 500_000.0;
/// The strongest tone of a group must beat the second by this power ratio (8 dB).
const GROUP_MARGIN: f32 = 6.3;
/// Largest level difference between the two tones (Q.24 twist: 8 dB, one way 4 dB; we
/// accept 8 dB both ways, since trunks distort both ways).
const MAX_TWIST: f32 = 6.3;
/// The two tones must carry this share of the frame's power: speech and music spread
/// their power over many frequencies, a key press has nearly all of it in two.
const MIN_TONE_SHARE: f32 = 0.6;

/// Power of `samples` at `freq` (Goertzel), normalised to the mean power of a sine of
/// that frequency: a pure tone of amplitude A gives about A²/2.
fn goertzel_power(samples: &[i16], freq: f32) -> f32 {
    let n = samples.len() as f32;
    let coeff = 2.0 * (2.0 * std::f32::consts::PI * freq / super::SAMPLE_RATE as f32).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s = f32::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let magnitude_sq = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // |X|² of a sine of amplitude A over n samples is (A·n/2)²; scale to A²/2.
    2.0 * magnitude_sq / (n * n)
}

/// Index and power of the strongest entry, and whether it beats every other one by
/// `GROUP_MARGIN`.
fn strongest(powers: &[f32; 4]) -> (usize, f32, bool) {
    let mut best = 0;
    for i in 1..4 {
        if powers[i] > powers[best] {
            best = i;
        }
    }
    let clear = powers
        .iter()
        .enumerate()
        .all(|(i, &p)| i == best || p * GROUP_MARGIN < powers[best]);
    (best, powers[best], clear)
}

/// The key whose two tones dominate one frame, if any.
pub fn detect_frame(samples: &[i16]) -> Option<char> {
    if samples.is_empty() {
        return None;
    }
    // Straight from the i16 samples (exact in f32): this runs on the pacer thread for
    // every in-band frame received, so no per-frame buffer.
    let total = samples
        .iter()
        .map(|&s| f32::from(s) * f32::from(s))
        .sum::<f32>()
        / samples.len() as f32;
    let rows = ROWS.map(|f| goertzel_power(samples, f));
    let cols = COLS.map(|f| goertzel_power(samples, f));
    let (r, rp, r_clear) = strongest(&rows);
    let (c, cp, c_clear) = strongest(&cols);
    let ok = r_clear
        && c_clear
        && rp >= MIN_TONE_POWER
        && cp >= MIN_TONE_POWER
        && rp < cp * MAX_TWIST
        && cp < rp * MAX_TWIST
        && rp + cp >= MIN_TONE_SHARE * total;
    ok.then(|| KEYPAD[r][c])
}

impl InbandDetector {
    /// Feeds one 20 ms frame of 8 kHz linear audio; returns a key once per press.
    pub fn on_frame(&mut self, samples: &[i16]) -> Option<char> {
        let now = detect_frame(samples);
        let confirmed = now.is_some() && now == self.candidate;
        self.candidate = now;
        match now {
            None => {
                self.held = None;
                None
            }
            Some(k) if confirmed && self.held != Some(k) => {
                self.held = Some(k);
                Some(k)
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// RFC 4733 payload bytes.
    fn ev(event: u8, end: bool, volume: u8, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [event, u8::from(end) << 7 | volume, d[0], d[1]]
    }

    #[test]
    fn parses_rfc4733_payloads() {
        // Key 5, not end, volume 10, 400 samples (50 ms).
        assert_eq!(
            TelephoneEvent::parse(&[0x05, 0x0a, 0x01, 0x90]),
            Some(TelephoneEvent {
                event: 5,
                end: false,
                volume: 10,
                duration: 400
            })
        );
        // '#' with E bit and the reserved bit set (ignored), 1600 samples.
        assert_eq!(
            TelephoneEvent::parse(&[11, 0xc0 | 7, 0x06, 0x40]),
            Some(TelephoneEvent {
                event: 11,
                end: true,
                volume: 7,
                duration: 1600
            })
        );
        assert_eq!(TelephoneEvent::parse(&[1, 2, 3]), None, "truncated");
        assert_eq!(event_char(10), Some('*'));
        assert_eq!(event_char(15), Some('D'));
        assert_eq!(event_char(16), None, "flash-hook and others are not keys");
    }

    #[test]
    fn one_press_per_event_despite_repeats_and_end_retransmissions() {
        let mut rx = TelephoneEventReceiver::default();
        let ts = 0xffff_ff00; // near the wrap: identity, not order, matters
        let mut keys = Vec::new();
        // Start, two updates while held, then End three times (RFC 4733 §2.5.1.4).
        for (end, dur) in [(false, 160), (false, 320), (false, 480)] {
            keys.extend(rx.on_packet(ts, &ev(7, end, 10, dur)));
        }
        for _ in 0..3 {
            keys.extend(rx.on_packet(ts, &ev(7, true, 10, 800)));
        }
        assert_eq!(keys, vec!['7']);
        // The same key pressed again is a new event with a new timestamp.
        assert_eq!(
            rx.on_packet(ts.wrapping_add(2400), &ev(7, false, 10, 160)),
            Some('7')
        );
        assert_eq!(
            rx.on_packet(ts.wrapping_add(2400), &ev(7, true, 10, 640)),
            None
        );
        // An event seen only by its End packets (start packets lost) still counts once.
        assert_eq!(rx.on_packet(5000, &ev(0, true, 10, 800)), Some('0'));
        assert_eq!(rx.on_packet(5000, &ev(0, true, 10, 800)), None);
        // Non-DTMF events and garbage are ignored.
        assert_eq!(rx.on_packet(9000, &ev(16, false, 10, 160)), None);
        assert_eq!(rx.on_packet(9160, &[]), None);
    }

    /// An RTP packet (no CSRC, no extension) around `payload`.
    fn rtp(pt: u8, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 1];
        p.extend(ts.to_be_bytes());
        p.extend(0x1234_abcdu32.to_be_bytes());
        p.extend(payload);
        p
    }

    #[test]
    fn rtp_input_reads_events_at_the_negotiated_type_and_ignores_strays() {
        let mut rx = RtpKeyInput::new(Some(96));
        let media = |key| RtpInput::Media { key };
        assert_eq!(
            rx.on_datagram(&rtp(96, 800, &ev(3, false, 10, 160))),
            media(Some('3'))
        );
        assert_eq!(
            rx.on_datagram(&rtp(96, 800, &ev(3, true, 10, 320))),
            media(None)
        );
        assert_eq!(rx.on_datagram(&rtp(0, 960, &[0xff; 160])), media(None));
        // Not media of this call: comfort noise, RTCP read as RTP, an unnegotiated
        // telephone-event type, STUN, truncated headers.
        assert_eq!(rx.on_datagram(&rtp(13, 1, &[0x40])), RtpInput::Ignored);
        assert_eq!(rx.on_datagram(&rtp(72, 1, &[0; 20])), RtpInput::Ignored);
        assert_eq!(
            rx.on_datagram(&rtp(101, 2, &ev(4, false, 10, 160))),
            RtpInput::Ignored
        );
        let stun = [0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(rx.on_datagram(&stun), RtpInput::Ignored);
        assert_eq!(rx.on_datagram(&[0x80, 0]), RtpInput::Ignored);
    }

    #[test]
    fn rtp_input_detects_inband_keys_only_without_telephone_events() {
        let frames: Vec<Vec<u8>> = tone(ROWS[1], COLS[1], 5000.0, 100.0, 3, 2)
            .chunks(160)
            .map(|f| crate::media::g711::encode(crate::media::G711::Ulaw, f))
            .collect();
        let keys = |rx: &mut RtpKeyInput| -> Vec<char> {
            frames
                .iter()
                .filter_map(|f| match rx.on_datagram(&rtp(0, 0, f)) {
                    RtpInput::Media { key } => key,
                    RtpInput::Ignored => None,
                })
                .collect()
        };
        assert_eq!(keys(&mut RtpKeyInput::new(None)), vec!['5']);
        assert!(keys(&mut RtpKeyInput::new(Some(101))).is_empty());
    }

    /// Deterministic noise (xorshift) so a failure reproduces.
    struct Noise(u32);
    impl Noise {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 17;
            self.0 ^= self.0 << 5;
            (self.0 as f32 / u32::MAX as f32) * 2.0 - 1.0
        }
    }

    /// `frames` of 20 ms: tones `f1`, `f2` at amplitude `a` each, plus white noise of
    /// amplitude `noise`, through G.711 µ-law and back (what the pacer sees).
    fn tone(f1: f32, f2: f32, a: f32, noise: f32, frames: usize, seed: u32) -> Vec<i16> {
        let mut n = Noise(seed);
        (0..frames * 160)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let v = a * (2.0 * std::f32::consts::PI * f1 * t).sin()
                    + a * (2.0 * std::f32::consts::PI * f2 * t).sin()
                    + noise * n.next();
                let s = v.clamp(-32768.0, 32767.0) as i16;
                crate::media::g711::decode_sample(
                    crate::media::G711::Ulaw,
                    crate::media::g711::encode_sample(crate::media::G711::Ulaw, s),
                )
            })
            .collect()
    }

    fn run(det: &mut InbandDetector, audio: &[i16]) -> Vec<char> {
        audio.chunks(160).filter_map(|f| det.on_frame(f)).collect()
    }

    #[test]
    fn detects_every_key_in_noise_once_per_press() {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &key) in row.iter().enumerate() {
                let mut det = InbandDetector::default();
                // 100 ms of key at about -13 dBm0 per tone, noise 20 dB below it.
                let audio = tone(
                    ROWS[r],
                    COLS[c],
                    5000.0,
                    500.0,
                    5,
                    r as u32 * 4 + c as u32 + 1,
                );
                assert_eq!(run(&mut det, &audio), vec![key], "key {key}");
            }
        }
    }

    #[test]
    fn two_presses_need_a_pause_between() {
        let mut det = InbandDetector::default();
        let press = tone(ROWS[1], COLS[1], 4000.0, 200.0, 4, 7); // '5'
        let quiet = tone(0.0, 0.0, 0.0, 200.0, 2, 8);
        let mut audio = press.clone();
        audio.extend(&press); // held for 160 ms: one press
        audio.extend(&quiet);
        audio.extend(&press);
        assert_eq!(run(&mut det, &audio), vec!['5', '5']);
    }

    #[test]
    fn a_single_frame_blip_is_not_a_key() {
        let mut det = InbandDetector::default();
        let mut audio = tone(ROWS[0], COLS[0], 5000.0, 100.0, 1, 3);
        audio.extend(tone(0.0, 0.0, 0.0, 100.0, 3, 4));
        assert_eq!(run(&mut det, &audio), Vec::<char>::new());
    }

    #[test]
    fn rejects_noise_speechlike_audio_and_single_tones() {
        let mut det = InbandDetector::default();
        // Loud white noise.
        assert!(run(&mut det, &tone(0.0, 0.0, 0.0, 12000.0, 50, 11)).is_empty());
        // Vowel-like: a 120 Hz voice with harmonics up to 3.4 kHz, decaying 1/k, plus
        // noise. Its power is spread across many frequencies, some near DTMF tones.
        let mut n = Noise(99);
        let speech: Vec<i16> = (0..160 * 50)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let v: f32 = (1..28)
                    .map(|k| {
                        3000.0 / k as f32
                            * (2.0 * std::f32::consts::PI * 120.0 * k as f32 * t).sin()
                    })
                    .sum();
                (v + 300.0 * n.next()).clamp(-32768.0, 32767.0) as i16
            })
            .collect();
        assert!(run(&mut det, &speech).is_empty());
        // One tone only (dial tone-ish at a DTMF row frequency).
        assert!(run(&mut det, &tone(ROWS[2], 0.0, 6000.0, 100.0, 10, 5)).is_empty());
        // Two tones from the same group (not a key).
        assert!(run(&mut det, &tone(ROWS[0], ROWS[3], 5000.0, 100.0, 10, 6)).is_empty());
        // A key too quiet to be a key (about -45 dBm0).
        assert!(run(&mut det, &tone(ROWS[0], COLS[2], 150.0, 10.0, 10, 9)).is_empty());
        // A key buried in noise as loud as itself: power share too low.
        assert!(run(&mut det, &tone(ROWS[0], COLS[2], 3000.0, 9000.0, 10, 10)).is_empty());
    }

    #[test]
    fn real_speech_of_the_shipped_packs_is_not_a_key() {
        let lib = crate::media::PromptLibrary::builtin();
        for pack in lib.packs() {
            for p in crate::media::Phrase::ALL {
                let mut det = InbandDetector::default();
                let keys = run(&mut det, pack.pcm(p));
                assert!(keys.is_empty(), "{} {p:?} heard as {keys:?}", pack.locale());
            }
        }
    }

    #[test]
    fn twist_beyond_the_limit_is_rejected() {
        // Row tone 20 dB below the column tone.
        let mut n = Noise(1);
        let audio: Vec<i16> = (0..160 * 5)
            .map(|i| {
                let t = i as f32 / 8000.0;
                let v = 500.0 * (2.0 * std::f32::consts::PI * ROWS[0] * t).sin()
                    + 5000.0 * (2.0 * std::f32::consts::PI * COLS[0] * t).sin()
                    + 50.0 * n.next();
                v as i16
            })
            .collect();
        assert!(run(&mut InbandDetector::default(), &audio).is_empty());
    }
}
