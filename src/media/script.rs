//! The call script: what to say, and when, in one call. Pure code: no I/O, no clock.
//!
//! The pacer walks a script item by item; `Silence` is counted in 20 ms frames so the
//! script is exactly as long in packets as the call will be.

use std::time::Duration;

use super::{Phrase, PromptPack, FRAME_DURATION, G711};

/// Silence before the first word: the far end often unmutes its audio path a moment
/// after the 200 OK, and the first syllable would be lost.
pub const LEAD_IN_FRAMES: u32 = 10;
/// Silence after "Goodbye" before the BYE, so jitter buffers play it out in full.
pub const TAIL_FRAMES: u32 = 10;
/// How long a `require_keypress` call waits for a key after asking for one (SPEC §4:
/// 15 s), in frames.
pub const KEYPRESS_TIMEOUT_FRAMES: u32 = 15 * 50;

/// One step of a call script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptItem {
    /// Play a phrase of the pack.
    Say(Phrase),
    /// Send this many 20 ms silence frames.
    Silence {
        /// Number of 20 ms frames.
        frames: u32,
    },
    /// A reading of the code begins (no audio; lets the pacer count readings).
    CodeStart,
    /// A reading of the code is complete (no audio; reported as `CodePlayed`).
    CodeEnd,
    /// Silence while waiting for the keys `expect`: once they are keyed, in order,
    /// playing moves on past this item. A wrong key, or the frames running out first,
    /// ends the playout without reading the code. Keys that arrive before this item
    /// starts (while the request is still being said) count for nothing, unless
    /// `early`.
    AwaitKey {
        /// Number of 20 ms frames to wait.
        frames: u32,
        /// The digits to key.
        expect: Keys,
        /// Keys count from the start of the request too (the rest of the request is
        /// then skipped). For digits the far end cannot learn from the call itself
        /// (`bind_digits`); never for a digit the request says.
        early: bool,
    },
}

pub use crate::domain::Keys;

/// The ordered items of one call.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CallScript {
    /// Items in playing order.
    pub items: Vec<ScriptItem>,
}

/// Whole 20 ms frames in a duration, rounded to nearest.
fn frames_of(d: Duration) -> u32 {
    let frames = (d.as_micros() + FRAME_DURATION.as_micros() / 2) / FRAME_DURATION.as_micros();
    u32::try_from(frames).unwrap_or(u32::MAX)
}

/// Sizes of the digit groups, as people say phone codes: at most 4 per group, as even
/// as possible, the longer groups last (6 = 3+3, 7 = 3+4, 8 = 4+4, 10 = 3+3+4).
pub fn group_sizes(n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let groups = n.div_ceil(4);
    let (base, extra) = (n / groups, n % groups);
    (0..groups)
        .map(|g| base + usize::from(g >= groups - extra))
        .collect()
}

impl CallScript {
    /// The standard script: lead-in, intro, then `repeat` readings of the code (the
    /// second and later ones introduced by "I repeat"), then outro. Each reading is the
    /// digits in groups ([`group_sizes`]), the pack's digit pause between two digits and
    /// its group pause between groups and before the reading; the last digit of each
    /// group is said in its final form ([`Phrase::FinalDigit`]).
    ///
    /// `repeat` below 1 is taken as 1: the call exists to read the code. Digits above 9
    /// are skipped (callers pass a validated code; this function must not panic).
    pub fn build(pack: &PromptPack, digits: &[u8], repeat: u32) -> CallScript {
        let digit_pause = frames_of(pack.digit_pause());
        let group_pause = frames_of(pack.group_pause());
        let digits: Vec<u8> = digits.iter().copied().filter(|&d| d <= 9).collect();

        let mut items = vec![
            ScriptItem::Silence {
                frames: LEAD_IN_FRAMES,
            },
            ScriptItem::Say(Phrase::Intro),
        ];
        for reading in 0..repeat.max(1) {
            if reading > 0 {
                items.push(ScriptItem::Silence {
                    frames: group_pause,
                });
                items.push(ScriptItem::Say(Phrase::Repeat));
            }
            // A longer pause before the code than between its digits: the listener
            // hears where the code starts, and a recogniser does not join the first
            // digit to the phrase before it ("is four" heard as "is for").
            items.push(ScriptItem::Silence {
                frames: group_pause,
            });
            items.push(ScriptItem::CodeStart);
            let mut rest = digits.as_slice();
            for (g, size) in group_sizes(digits.len()).into_iter().enumerate() {
                if g > 0 {
                    items.push(ScriptItem::Silence {
                        frames: group_pause,
                    });
                }
                let (group, tail) = rest.split_at(size.min(rest.len()));
                rest = tail;
                for (i, &d) in group.iter().enumerate() {
                    if i > 0 {
                        items.push(ScriptItem::Silence {
                            frames: digit_pause,
                        });
                    }
                    // The last digit of a group in its final (falling) form, the
                    // others in the form said inside a list (the pack falls back to
                    // the plain digit when it has no final form).
                    let phrase = if i + 1 == group.len() {
                        Phrase::FinalDigit(d)
                    } else {
                        Phrase::Digit(d)
                    };
                    items.push(ScriptItem::Say(phrase));
                }
            }
            items.push(ScriptItem::CodeEnd);
        }
        items.push(ScriptItem::Silence {
            frames: group_pause,
        });
        items.push(ScriptItem::Say(Phrase::Outro));
        items.push(ScriptItem::Silence {
            frames: TAIL_FRAMES,
        });
        CallScript { items }
    }

    /// The `require_keypress` script (SPEC §4, §6; the voicemail guard): lead-in,
    /// "To hear your code, press" and the digit `challenge` (random per call), then up
    /// to [`KEYPRESS_TIMEOUT_FRAMES`] of silence waiting for that digit, then the
    /// standard script (intro, readings, outro).
    ///
    /// A greeting with tones, or a line that forwards any key, cannot pass: keys during
    /// the request are ignored, and the wrong digit ends the call.
    pub fn with_keypress(
        pack: &PromptPack,
        digits: &[u8],
        repeat: u32,
        challenge: Keys,
    ) -> CallScript {
        let mut items = vec![
            ScriptItem::Silence {
                frames: LEAD_IN_FRAMES,
            },
            ScriptItem::Say(Phrase::PressKey),
        ];
        items.extend(
            challenge
                .digits()
                .iter()
                .map(|&d| ScriptItem::Say(Phrase::FinalDigit(d))),
        );
        items.push(ScriptItem::AwaitKey {
            frames: KEYPRESS_TIMEOUT_FRAMES,
            expect: challenge,
            early: false,
        });
        // The standard script's lead-in becomes the gap after the key, so the key's
        // tone has ended before "Your verification code is" starts.
        items.extend(CallScript::build(pack, digits, repeat).items);
        CallScript { items }
    }

    /// The `bind_digits` script (SPEC §6): lead-in, "To hear your code, enter the two
    /// digits shown on your screen", then up to [`KEYPRESS_TIMEOUT_FRAMES`] waiting
    /// for `bind` keyed in order, then the standard script. The digits are not said:
    /// only someone who sees the login screen knows them, so keys count from the start
    /// of the request (a wrong one still ends the call).
    pub fn with_bind(pack: &PromptPack, digits: &[u8], repeat: u32, bind: Keys) -> CallScript {
        let mut items = vec![
            ScriptItem::Silence {
                frames: LEAD_IN_FRAMES,
            },
            ScriptItem::Say(Phrase::Bind),
            // Someone who reads the digits off the screen may key them while the
            // request still plays; only the screen tells them, so nothing is lost.
            ScriptItem::AwaitKey {
                frames: KEYPRESS_TIMEOUT_FRAMES,
                expect: bind,
                early: true,
            },
        ];
        items.extend(CallScript::build(pack, digits, repeat).items);
        CallScript { items }
    }

    /// Index of the first [`ScriptItem::AwaitKey`] at or after item `at`.
    pub fn gate_from(&self, at: usize) -> Option<usize> {
        let at = at.min(self.items.len());
        self.items[at..]
            .iter()
            .position(|i| matches!(i, ScriptItem::AwaitKey { .. }))
            .map(|p| at + p)
    }

    /// Where playing continues when a key is pressed while item `at` plays, past the
    /// last key gate: the reading of the code starts over, back to the first reading
    /// after the gate (and the pause before it), so the remaining readings follow again
    /// (SPEC §4). Keys at a gate, or before one, are the pacer's to judge
    /// ([`ScriptItem::AwaitKey`]).
    ///
    /// `None` when the script holds no code to restart, or a gate is still ahead.
    pub fn after_key(&self, at: usize) -> Option<usize> {
        let items = &self.items;
        let at = at.min(items.len());
        if self.gate_from(at).is_some() {
            return None;
        }
        let gate = items[..at]
            .iter()
            .rposition(|i| matches!(i, ScriptItem::AwaitKey { .. }))
            .map_or(0, |i| i + 1);
        let start = gate
            + items[gate..]
                .iter()
                .position(|i| *i == ScriptItem::CodeStart)?;
        // Begin with the pause before the reading, so the digits do not follow the cut
        // phrase (or the key's tone) without a gap.
        if start > gate && matches!(items[start - 1], ScriptItem::Silence { .. }) {
            Some(start - 1)
        } else {
            Some(start)
        }
    }

    /// Length of the script in 20 ms frames (= RTP packets) when played with `pack`.
    pub fn frame_count(&self, pack: &PromptPack) -> u64 {
        self.items
            .iter()
            .map(|item| match *item {
                ScriptItem::Say(p) => pack.pcm(p).len().div_ceil(super::FRAME_SAMPLES) as u64,
                ScriptItem::Silence { frames } | ScriptItem::AwaitKey { frames, .. } => {
                    u64::from(frames)
                }
                ScriptItem::CodeStart | ScriptItem::CodeEnd => 0,
            })
            .sum()
    }

    /// The payload bytes the pacer sends for this script with `pack` in `codec`, back
    /// to back (160 bytes a packet), as if no key came: an [`ScriptItem::AwaitKey`]
    /// plays its silence to the end. For tests, benchmarks and the test phone.
    pub fn payload(&self, pack: &PromptPack, codec: G711) -> Vec<u8> {
        let mut bytes = Vec::new();
        for item in &self.items {
            match *item {
                ScriptItem::Say(p) => {
                    for f in pack.frames(p, codec) {
                        bytes.extend_from_slice(f);
                    }
                }
                ScriptItem::Silence { frames } | ScriptItem::AwaitKey { frames, .. } => {
                    bytes.extend(std::iter::repeat_n(
                        codec.silence(),
                        frames as usize * super::FRAME_SAMPLES,
                    ));
                }
                ScriptItem::CodeStart | ScriptItem::CodeEnd => {}
            }
        }
        bytes
    }

    /// Playing time of the script with `pack`.
    pub fn duration(&self, pack: &PromptPack) -> Duration {
        FRAME_DURATION * u32::try_from(self.frame_count(pack)).unwrap_or(u32::MAX)
    }

    /// How many readings of the code the script holds.
    pub fn readings(&self) -> u32 {
        let n = self
            .items
            .iter()
            .filter(|i| matches!(i, ScriptItem::CodeEnd))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::ScriptItem::*;
    use super::*;
    use crate::media::PromptLibrary;

    #[test]
    fn groups() {
        assert_eq!(group_sizes(0), Vec::<usize>::new());
        assert_eq!(group_sizes(3), vec![3]);
        assert_eq!(group_sizes(4), vec![4]);
        assert_eq!(group_sizes(5), vec![2, 3]);
        assert_eq!(group_sizes(6), vec![3, 3]);
        assert_eq!(group_sizes(7), vec![3, 4]);
        assert_eq!(group_sizes(8), vec![4, 4]);
        assert_eq!(group_sizes(9), vec![3, 3, 3]);
        assert_eq!(group_sizes(10), vec![3, 3, 4]);
    }

    #[test]
    fn six_digits_read_twice() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let s = CallScript::build(&pack, &[4, 8, 1, 5, 2, 6], 2);
        let dp = Silence { frames: 18 }; // 350 ms, rounded to whole 20 ms frames
        let gp = Silence { frames: 40 }; // 800 ms
        let d = |x| Say(Phrase::Digit(x));
        let f = |x| Say(Phrase::FinalDigit(x));
        let code = [
            gp,
            CodeStart,
            d(4),
            dp,
            d(8),
            dp,
            f(1),
            gp,
            d(5),
            dp,
            d(2),
            dp,
            f(6),
            CodeEnd,
        ];
        let mut want = vec![Silence { frames: 10 }, Say(Phrase::Intro)];
        want.extend(code);
        want.extend([gp, Say(Phrase::Repeat)]);
        want.extend(code);
        want.extend([gp, Say(Phrase::Outro), Silence { frames: 10 }]);
        assert_eq!(s.items, want);
        assert_eq!(s.readings(), 2);
    }

    #[test]
    fn seven_digits_group_three_four_and_repeat_zero_reads_once() {
        let pack = PromptLibrary::builtin().get("nl").unwrap();
        let s = CallScript::build(&pack, &[1, 2, 3, 4, 5, 6, 7], 0);
        assert_eq!(s.readings(), 1);
        let gap_positions: Vec<usize> = s
            .items
            .iter()
            .skip_while(|i| **i != CodeStart)
            .take_while(|i| **i != CodeEnd)
            .filter(|i| {
                matches!(
                    i,
                    Say(Phrase::Digit(_) | Phrase::FinalDigit(_)) | Silence { frames: 40 }
                )
            })
            .enumerate()
            .filter(|(_, i)| matches!(i, Silence { frames: 40 }))
            .map(|(n, _)| n)
            .collect();
        assert_eq!(gap_positions, vec![3], "group pause after the third digit");
    }

    #[test]
    fn frame_count_adds_phrases_and_silence() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let s = CallScript {
            items: vec![Silence { frames: 3 }, Say(Phrase::Digit(1)), CodeEnd],
        };
        let one = pack
            .frames(Phrase::Digit(1), crate::media::G711::Ulaw)
            .len() as u64;
        assert_eq!(s.frame_count(&pack), 3 + one);
        assert_eq!(s.duration(&pack), FRAME_DURATION * (3 + one as u32));
    }

    #[test]
    fn keypress_script_asks_for_the_digit_then_waits_fifteen_seconds() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let seven = Keys::one(7).unwrap();
        let s = CallScript::with_keypress(&pack, &[1, 2, 3, 4], 1, seven);
        assert_eq!(
            s.items[..5],
            [
                Silence { frames: 10 },
                Say(Phrase::PressKey),
                Say(Phrase::FinalDigit(7)),
                AwaitKey {
                    frames: 750,
                    expect: seven,
                    early: false,
                },
                Silence { frames: 10 },
            ]
        );
        assert_eq!(
            s.items[5..],
            CallScript::build(&pack, &[1, 2, 3, 4], 1).items[1..]
        );
        assert_eq!(s.readings(), 1);
    }

    #[test]
    fn bind_script_asks_without_saying_the_digits() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let keys = Keys::two(4, 7).unwrap();
        let s = CallScript::with_bind(&pack, &[1, 2, 3, 4], 2, keys);
        assert_eq!(
            s.items[..4],
            [
                Silence { frames: 10 },
                Say(Phrase::Bind),
                AwaitKey {
                    frames: 750,
                    expect: keys,
                    early: true,
                },
                Silence { frames: 10 },
            ]
        );
        // Neither 4 nor 7 is said before the gate.
        assert_eq!(s.gate_from(0), Some(2));
        assert_eq!(s.readings(), 2);
    }

    #[test]
    fn keys_match_in_order() {
        let k = Keys::two(4, 7).unwrap();
        assert_eq!(k.digits(), &[4, 7]);
        assert!(k.matches(0, '4') && k.matches(1, '7'));
        assert!(!k.matches(0, '7') && !k.matches(1, '4') && !k.matches(2, '7'));
        assert!(!k.matches(0, '*') && !k.matches(0, 'A'));
        assert_eq!(Keys::one(10), None);
        assert_eq!(Keys::two(1, 10), None);
        assert_eq!(Keys::one(0).unwrap().digits(), &[0]);
        assert_eq!(Keys::parse("47"), Keys::two(4, 7));
        assert_eq!(Keys::parse("0"), Keys::one(0));
        assert_eq!(Keys::two(0, 9).unwrap().to_text(), "09");
        for bad in ["", "123", "4a", "+4", " 4"] {
            assert_eq!(Keys::parse(bad), None, "{bad:?}");
        }
        let r = Keys::random(2);
        assert_eq!(r.digits().len(), 2);
        assert!(r.digits().iter().all(|&d| d <= 9));
        assert_eq!(Keys::parse(&r.to_text()), Some(r));
    }

    #[test]
    fn a_key_after_the_gate_restarts_the_first_reading() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let s = CallScript::with_keypress(&pack, &[1, 2, 3], 2, Keys::one(5).unwrap());
        let pos = |item: ScriptItem, nth: usize| {
            s.items
                .iter()
                .enumerate()
                .filter(|(_, i)| **i == item)
                .nth(nth)
                .map(|(n, _)| n)
                .unwrap()
        };
        let gate = s.gate_from(0).unwrap();
        let first_reading = pos(CodeStart, 0);
        // During the request and at the gate: not a restart (the pacer judges keys).
        assert_eq!(s.after_key(1), None);
        assert_eq!(s.after_key(gate), None);
        // During the intro, inside a reading, during "I repeat", the second reading
        // and the outro: back to the pause before the first reading.
        assert!(matches!(s.items[first_reading - 1], Silence { .. }));
        for at in [
            gate + 2,
            first_reading + 2,
            pos(Say(Phrase::Repeat), 0),
            pos(CodeStart, 1) + 1,
            pos(Say(Phrase::Outro), 0),
            s.items.len() - 1,
        ] {
            assert_eq!(s.after_key(at), Some(first_reading - 1), "key at item {at}");
        }
        // Without a gate the same holds from the start.
        let plain = CallScript::build(&pack, &[1, 2, 3], 1);
        let cs = plain.items.iter().position(|i| *i == CodeStart).unwrap();
        assert_eq!(plain.after_key(0), Some(cs - 1));
        // Nothing to restart in a script without a code.
        let none = CallScript {
            items: vec![Silence { frames: 3 }],
        };
        assert_eq!(none.after_key(0), None);
    }

    #[test]
    fn bad_digits_are_skipped() {
        let pack = PromptLibrary::builtin().get("en").unwrap();
        let s = CallScript::build(&pack, &[1, 42], 1);
        assert!(!s.items.contains(&Say(Phrase::Digit(42))));
        assert!(!s.items.contains(&Say(Phrase::FinalDigit(42))));
        assert!(s.items.contains(&Say(Phrase::FinalDigit(1))));
    }
}
