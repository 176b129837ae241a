//! The script cursor: where a call is in its [`CallScript`], and every rule about keys
//! (the key gates of `require_keypress` and `bind_digits`, and the restart of the
//! reading on a key). Pure code: no clock, no socket, no channel. The pacer's stream
//! asks it for one frame per packet and hands it every key press, whatever its source
//! (RFC 4733, in-band tones, SIP INFO).
//!
//! The rules (SPEC §4, §6):
//! - at a key gate ([`ScriptItem::AwaitKey`]) the keys must be the expected digits in
//!   order: all of them open the gate (playing goes on past it), a wrong one ends the
//!   call without reading the code, and the gate's frames running out ends it too;
//! - a key while the request before a gate is still being said counts for nothing,
//!   unless the gate takes keys early (`bind_digits`: only the login screen tells the
//!   digits, so keying them during the request is fine, and skips the rest of it);
//! - past every gate, a key restarts the reading of the code ([`CallScript::after_key`]),
//!   at most [`MAX_RESTARTS`] times per call.

use std::sync::Arc;

use super::script::{CallScript, ScriptItem};
use super::{PromptPack, FRAME_SAMPLES, G711};

/// Restarts of the reading allowed per call, so a stuck key cannot hold the line open.
pub const MAX_RESTARTS: u8 = 10;

/// What the next packet carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A frame of the pack's speech.
    Speech(&'a [u8; FRAME_SAMPLES]),
    /// 20 ms of silence (a pause, or waiting at a key gate).
    Silence,
    /// The script is over: nothing more to send.
    End(EndCause),
}

/// Why a script ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// Every item was played.
    Done,
    /// A key gate's frames ran out before its keys came (the code was not read).
    NoKeypress,
    /// A wrong key came at a key gate (the code was not read).
    WrongKey,
}

/// What a key press did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Nothing: said during the request of a gate that does not take keys early, after
    /// the last allowed restart, in a script without a code, or after the end.
    Ignored,
    /// The right next digit at a gate; more are expected.
    Counted,
    /// The last expected digit: playing continues past the gate.
    Opened,
    /// A wrong digit at a gate: the script is over ([`EndCause::WrongKey`]).
    Wrong,
    /// Past every gate: the reading of the code starts over.
    Restarted,
}

/// A call's position in its script. The frames are borrowed from the pack (no copy).
#[derive(Debug)]
pub struct ScriptCursor {
    script: CallScript,
    pack: Arc<PromptPack>,
    codec: G711,
    /// Current item, and frames of it already played.
    item: usize,
    frame: u32,
    /// Complete readings of the code so far.
    times_played: u32,
    restarts: u8,
    /// Digits keyed correctly so far at the current gate.
    keyed: u8,
    ended: Option<EndCause>,
}

impl ScriptCursor {
    /// At the start of `script`, to be played with `pack` in `codec`.
    pub fn new(script: CallScript, pack: Arc<PromptPack>, codec: G711) -> ScriptCursor {
        ScriptCursor {
            script,
            pack,
            codec,
            item: 0,
            frame: 0,
            times_played: 0,
            restarts: 0,
            keyed: 0,
            ended: None,
        }
    }

    /// Complete readings of the code so far (a [`ScriptItem::CodeEnd`] passed).
    pub fn times_played(&self) -> u32 {
        self.times_played
    }

    /// Why the script ended, once it has.
    pub fn ended(&self) -> Option<EndCause> {
        self.ended
    }

    /// The law the frames are in.
    pub fn codec(&self) -> G711 {
        self.codec
    }

    /// Advances to the next frame, passing markers on the way (a `CodeEnd` counts a
    /// reading). After [`Frame::End`] every call returns it again.
    pub fn next_frame(&mut self) -> Frame<'_> {
        loop {
            if let Some(cause) = self.ended {
                return Frame::End(cause);
            }
            let Some(item) = self.script.items.get(self.item).copied() else {
                self.ended = Some(EndCause::Done);
                continue;
            };
            match item {
                ScriptItem::CodeStart => {}
                ScriptItem::CodeEnd => self.times_played += 1,
                ScriptItem::Silence { frames } => {
                    if self.frame < frames {
                        self.frame += 1;
                        return Frame::Silence;
                    }
                }
                ScriptItem::AwaitKey { frames, .. } => {
                    if self.frame < frames {
                        self.frame += 1;
                        return Frame::Silence;
                    }
                    // No key in time: the code must not be spoken (SPEC §4).
                    self.ended = Some(EndCause::NoKeypress);
                    continue;
                }
                ScriptItem::Say(p) => {
                    let idx = self.frame as usize;
                    // Looked up again to return a borrow of the pack, not of `item`.
                    if let Some(f) = self.pack.frames(p, self.codec).get(idx) {
                        self.frame += 1;
                        return Frame::Speech(f);
                    }
                }
            }
            self.item += 1;
            self.frame = 0;
        }
    }

    /// A key press from any source (see the module doc for the rules).
    pub fn on_key(&mut self, key: char) -> KeyVerdict {
        if self.ended.is_some() {
            return KeyVerdict::Ignored;
        }
        let at = self.item.min(self.script.items.len());
        match self.script.gate_from(at) {
            Some(gate) if self.judges_keys(gate) => self.key_at_gate(gate, key),
            Some(_) => KeyVerdict::Ignored, // the request is still being said
            None => {
                if self.restarts >= MAX_RESTARTS {
                    return KeyVerdict::Ignored;
                }
                match self.script.after_key(self.item) {
                    Some(next) => {
                        self.restarts += 1;
                        self.item = next;
                        self.frame = 0;
                        KeyVerdict::Restarted
                    }
                    None => KeyVerdict::Ignored,
                }
            }
        }
    }

    /// A key at the gate `gate`, which judges keys now.
    fn key_at_gate(&mut self, gate: usize, key: char) -> KeyVerdict {
        let Some(ScriptItem::AwaitKey { expect, .. }) = self.script.items.get(gate).copied() else {
            return KeyVerdict::Ignored;
        };
        if !expect.matches(usize::from(self.keyed), key) {
            // The code must not be spoken (SPEC §6): a forwarded line or a greeting
            // with tones does not get to try every digit.
            self.ended = Some(EndCause::WrongKey);
            return KeyVerdict::Wrong;
        }
        self.keyed += 1;
        if usize::from(self.keyed) < expect.digits().len() {
            return KeyVerdict::Counted;
        }
        self.keyed = 0;
        self.item = gate + 1;
        self.frame = 0;
        KeyVerdict::Opened
    }

    /// Whether a key now counts at the gate `gate`: the request before it has been said
    /// in full, or the gate takes keys early.
    fn judges_keys(&self, gate: usize) -> bool {
        matches!(
            self.script.items.get(gate),
            Some(ScriptItem::AwaitKey { early: true, .. })
        ) || self.nothing_left_before(gate)
    }

    /// Whether every frame before item `gate` has been sent: the cursor is at the gate,
    /// or only finished items and markers (no frames) lie between.
    fn nothing_left_before(&self, gate: usize) -> bool {
        let items = &self.script.items;
        (self.item..gate.min(items.len())).all(|i| {
            let len = match items[i] {
                ScriptItem::Say(p) => self.pack.frames(p, self.codec).len(),
                ScriptItem::Silence { frames } | ScriptItem::AwaitKey { frames, .. } => {
                    frames as usize
                }
                ScriptItem::CodeStart | ScriptItem::CodeEnd => 0,
            };
            let played = if i == self.item {
                self.frame as usize
            } else {
                0
            };
            played >= len
        })
    }

    /// Heap bytes the cursor holds for its script (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.script.items.capacity() * std::mem::size_of::<ScriptItem>()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::media::script::KEYPRESS_TIMEOUT_FRAMES;
    use crate::media::{Keys, Phrase, PromptLibrary};

    fn pack() -> Arc<PromptPack> {
        PromptLibrary::builtin().get("en").unwrap()
    }

    /// Plays frames until the end; returns (frames played, how it ended).
    fn play_out(c: &mut ScriptCursor) -> (u64, EndCause) {
        let mut n = 0;
        loop {
            match c.next_frame() {
                Frame::End(cause) => return (n, cause),
                _ => n += 1,
            }
        }
    }

    /// Plays `n` frames.
    fn play(c: &mut ScriptCursor, n: u64) {
        for _ in 0..n {
            assert!(!matches!(c.next_frame(), Frame::End(_)));
        }
    }

    #[test]
    fn plays_every_frame_in_order_and_counts_readings() {
        let pack = pack();
        let script = CallScript::build(&pack, &[4, 8, 1, 5, 2, 6], 2);
        let want = script.payload(&pack, G711::Alaw);
        let mut c = ScriptCursor::new(script, Arc::clone(&pack), G711::Alaw);
        let mut got = Vec::new();
        loop {
            match c.next_frame() {
                Frame::Speech(f) => got.extend_from_slice(f),
                Frame::Silence => got.extend_from_slice(&[G711::Alaw.silence(); FRAME_SAMPLES]),
                Frame::End(cause) => {
                    assert_eq!(cause, EndCause::Done);
                    break;
                }
            }
        }
        assert_eq!(got, want);
        assert_eq!(c.times_played(), 2);
        assert_eq!(c.next_frame(), Frame::End(EndCause::Done));
        assert_eq!(c.on_key('1'), KeyVerdict::Ignored);
    }

    fn keypress(pack: &Arc<PromptPack>, digit: u8) -> (CallScript, u64) {
        let script = CallScript::with_keypress(pack, &[1, 2, 3], 1, Keys::one(digit).unwrap());
        // Frames of the request: lead-in, "press", the digit.
        let gate = script.gate_from(0).unwrap();
        let request = CallScript {
            items: script.items[..gate].to_vec(),
        }
        .frame_count(pack);
        (script, request)
    }

    #[test]
    fn no_key_within_fifteen_seconds_ends_the_call_unread() {
        let pack = pack();
        let (script, request) = keypress(&pack, 7);
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        let (frames, cause) = play_out(&mut c);
        assert_eq!(cause, EndCause::NoKeypress);
        assert_eq!(frames, request + u64::from(KEYPRESS_TIMEOUT_FRAMES));
        assert_eq!(c.times_played(), 0);
    }

    #[test]
    fn a_key_during_the_request_counts_for_nothing() {
        let pack = pack();
        let (script, request) = keypress(&pack, 7);
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        play(&mut c, request - 1); // the last frame of the digit is still to be said
        assert_eq!(c.on_key('7'), KeyVerdict::Ignored);
        assert_eq!(c.on_key('3'), KeyVerdict::Ignored, "not even a wrong one");
        let (_, cause) = play_out(&mut c);
        assert_eq!(cause, EndCause::NoKeypress);
    }

    #[test]
    fn the_right_key_at_the_gate_opens_it_at_once() {
        let pack = pack();
        let (script, request) = keypress(&pack, 7);
        let total_without_gate = {
            let mut s = script.clone();
            s.items
                .retain(|i| !matches!(i, ScriptItem::AwaitKey { .. }));
            s.frame_count(&pack)
        };
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        play(&mut c, request + 3); // 60 ms into the wait
        assert_eq!(c.on_key('7'), KeyVerdict::Opened);
        let (rest, cause) = play_out(&mut c);
        assert_eq!(cause, EndCause::Done);
        assert_eq!(c.times_played(), 1);
        assert_eq!(request + 3 + rest, total_without_gate + 3);
    }

    #[test]
    fn a_wrong_key_at_the_gate_ends_the_call_unread() {
        let pack = pack();
        let (script, request) = keypress(&pack, 7);
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        play(&mut c, request);
        assert_eq!(c.on_key('#'), KeyVerdict::Wrong);
        assert_eq!(c.next_frame(), Frame::End(EndCause::WrongKey));
        assert_eq!(c.on_key('7'), KeyVerdict::Ignored, "too late");
        assert_eq!(c.times_played(), 0);
    }

    #[test]
    fn bind_digits_count_from_the_start_of_the_request() {
        let pack = pack();
        let keys = Keys::two(4, 7).unwrap();
        let script = CallScript::with_bind(&pack, &[1, 2, 3], 1, keys);
        let plain = CallScript::build(&pack, &[1, 2, 3], 1).frame_count(&pack);
        // Both digits during the lead-in: the request and the wait are skipped.
        let mut c = ScriptCursor::new(script.clone(), Arc::clone(&pack), G711::Ulaw);
        play(&mut c, 2);
        assert_eq!(c.on_key('4'), KeyVerdict::Counted);
        assert_eq!(c.on_key('7'), KeyVerdict::Opened);
        let (rest, cause) = play_out(&mut c);
        assert_eq!((cause, c.times_played()), (EndCause::Done, 1));
        assert_eq!(2 + rest, 2 + plain, "the gate's script is the plain one");
        // The right first digit, then a wrong one: over, unread.
        let mut c = ScriptCursor::new(script.clone(), Arc::clone(&pack), G711::Ulaw);
        assert_eq!(c.on_key('4'), KeyVerdict::Counted);
        assert_eq!(c.on_key('4'), KeyVerdict::Wrong);
        assert_eq!(c.next_frame(), Frame::End(EndCause::WrongKey));
        // Only one digit: the gate waits for the second, then gives up.
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        assert_eq!(c.on_key('4'), KeyVerdict::Counted);
        assert_eq!(play_out(&mut c).1, EndCause::NoKeypress);
    }

    #[test]
    fn a_key_past_the_gate_restarts_the_reading_at_most_ten_times() {
        let pack = pack();
        let script = CallScript::build(&pack, &[1, 2, 3], 1);
        let plain = script.frame_count(&pack);
        let restart_at = script.after_key(script.items.len()).unwrap();
        let from_restart = CallScript {
            items: script.items[restart_at..].to_vec(),
        }
        .frame_count(&pack);
        let mut c = ScriptCursor::new(script, pack, G711::Ulaw);
        // Near the end (the last frame of the tail silence is still to go).
        play(&mut c, plain - 1);
        for _ in 0..MAX_RESTARTS {
            assert_eq!(c.on_key('5'), KeyVerdict::Restarted);
        }
        assert_eq!(c.on_key('5'), KeyVerdict::Ignored, "the eleventh");
        let (rest, cause) = play_out(&mut c);
        assert_eq!(cause, EndCause::Done);
        assert_eq!(rest, from_restart);
        assert_eq!(c.times_played(), 2);
        assert_eq!(
            CallScript {
                items: vec![ScriptItem::Say(Phrase::Intro)]
            }
            .after_key(0),
            None
        );
    }
}
