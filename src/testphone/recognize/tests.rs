//! Tests of the recogniser: clean audio, other packs, noise, and 15 % packet loss
//! (deterministic drop patterns, both ways a phone plays a lost frame).

#![allow(clippy::unwrap_used)] // tests may unwrap

use super::*;
use crate::media::{g711, CallScript, PromptLibrary, PromptPack, G711};
use rand::{Rng, SeedableRng};

/// The audio a phone hears: the script's frames exactly as the pacer sends them,
/// decoded, with a little noise (seeded, so failures reproduce).
fn heard(pack: &PromptPack, code: &[u8], repeat: u32, codec: G711, seed: u64) -> Vec<i16> {
    let bytes = CallScript::build(pack, code, repeat).payload(pack, codec);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    g711::decode(codec, &bytes)
        .into_iter()
        .map(|s| s.saturating_add(rng.random_range(-120..=120)))
        .collect()
}

fn recognise(lib: &PromptLibrary, audio: &[i16]) -> (Vec<PhraseMatch>, Vec<String>) {
    let matches = Recognizer::new(lib).recognize(audio);
    let phrases: Vec<Phrase> = matches.iter().map(|m| m.phrase).collect();
    let r = readings(&phrases);
    (matches, r)
}

#[test]
fn six_digit_code_en_ulaw() {
    let lib = PromptLibrary::builtin();
    let audio = heard(
        &lib.get("en").unwrap(),
        &[4, 8, 1, 5, 2, 6],
        3,
        G711::Ulaw,
        1,
    );
    let (matches, readings) = recognise(&lib, &audio);
    assert_eq!(readings, vec!["481526"; 3]);
    assert_ne!(readings[0], "481527");
    assert!(matches.iter().all(|m| m.locale == "en"));
    let phrases: Vec<Phrase> = matches.iter().map(|m| m.phrase).collect();
    assert_eq!(phrases.first(), Some(&Phrase::Intro));
    assert_eq!(phrases.last(), Some(&Phrase::Outro));
    assert_eq!(phrases.iter().filter(|p| **p == Phrase::Repeat).count(), 2);
    assert!(matches.iter().all(|m| m.score > 0.9), "{matches:?}");
}

#[test]
fn eight_digit_code_nl_alaw() {
    let lib = PromptLibrary::builtin();
    let audio = heard(
        &lib.get("nl").unwrap(),
        &[9, 0, 7, 3, 3, 0, 1, 8],
        2,
        G711::Alaw,
        2,
    );
    let (matches, readings) = recognise(&lib, &audio);
    assert_eq!(readings, vec!["90733018"; 2], "{matches:?}");
    assert!(matches.iter().all(|m| m.locale == "nl"));
}

#[test]
fn every_digit_both_packs_both_laws() {
    let lib = PromptLibrary::builtin();
    for locale in ["en", "nl"] {
        for codec in [G711::Ulaw, G711::Alaw] {
            let audio = heard(
                &lib.get(locale).unwrap(),
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                1,
                codec,
                3,
            );
            let (_, readings) = recognise(&lib, &audio);
            assert_eq!(readings, vec!["0123456789"], "{locale} {codec:?}");
        }
    }
}

#[test]
fn different_codes_are_told_apart() {
    let lib = PromptLibrary::builtin();
    let en = lib.get("en").unwrap();
    let a = recognise(&lib, &heard(&en, &[1, 1, 1, 1, 1, 1], 1, G711::Ulaw, 4)).1;
    let b = recognise(&lib, &heard(&en, &[1, 1, 1, 1, 1, 7], 1, G711::Ulaw, 4)).1;
    assert_eq!(a, vec!["111111"]);
    assert_eq!(b, vec!["111117"]);
}

#[test]
fn audio_not_from_a_loaded_pack_is_not_recognised() {
    // Load only `en`; play the `nl` pack. Nothing may match: the recognizer must
    // not invent digits from speech it does not know.
    let tmp = tempfile::tempdir().unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/en");
    let dst = tmp.path().join("en");
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let en_only = PromptLibrary::load_dir(tmp.path()).unwrap();
    let nl = PromptLibrary::builtin().get("nl").unwrap();
    let audio = heard(&nl, &[4, 8, 1, 5, 2, 6], 2, G711::Alaw, 5);
    let (matches, readings) = recognise(&en_only, &audio);
    assert!(matches.is_empty(), "{matches:?}");
    assert!(readings.is_empty());
}

#[test]
fn noise_alone_is_not_recognised() {
    let lib = PromptLibrary::builtin();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let audio: Vec<i16> = (0..8000 * 3)
        .map(|_| rng.random_range(-8000..=8000))
        .collect();
    assert!(recognise(&lib, &audio).0.is_empty());
}

/// How a phone plays a lost frame.
#[derive(Clone, Copy, Debug)]
enum Play {
    /// Not at all: the next frame follows at once (the audio is shorter).
    LeftOut,
    /// Silence in its place, the frame before fading out (the test phone's capture).
    Concealed,
    /// The next frame in its place, then the next frame again (baresip, seen in its
    /// recordings in tests/it/faults_net.rs).
    NextInItsPlace,
}

/// `audio` as a phone hears it when the packets of a fixed set of frames are lost:
/// frame i (20 ms) when (7 i + phase) mod 20 < 3, 15 % of them, in clusters of
/// three within seven frames; deterministic.
fn lossy(audio: &[i16], phase: usize, play: Play) -> Vec<i16> {
    let frames: Vec<&[i16]> = audio.chunks(FRAME).collect();
    let lost = |i: usize| (7 * i + phase) % 20 < 3;
    let mut out: Vec<i16> = Vec::with_capacity(audio.len());
    let mut prev: Option<std::ops::Range<usize>> = None;
    for (i, frame) in frames.iter().enumerate() {
        let at = out.len();
        if !lost(i) {
            out.extend_from_slice(frame);
            prev = Some(at..out.len());
            continue;
        }
        match play {
            Play::LeftOut => {}
            Play::Concealed => {
                out.extend(std::iter::repeat_n(0, frame.len()));
                if let Some(p) = prev.clone() {
                    crate::testphone::capture::conceal(&mut out, p, at + frame.len());
                }
            }
            Play::NextInItsPlace => {
                let next = frames[i + 1..].iter().zip(i + 1..).find(|(_, k)| !lost(*k));
                match next {
                    Some((f, _)) => out.extend_from_slice(&f[..frame.len().min(f.len())]),
                    None => out.extend(std::iter::repeat_n(0, frame.len())),
                }
            }
        }
    }
    out
}

/// The code read twice under 15 % loss, for several loss patterns, each way a phone
/// may play lost frames: the combined readings give the code every time, though single
/// readings lose digits.
#[test]
fn code_is_read_through_15_percent_loss() {
    let lib = PromptLibrary::builtin();
    let recognizer = Recognizer::new(&lib);
    let en = lib.get("en").unwrap();
    let clean = heard(&en, &[4, 7, 2, 9], 2, G711::Alaw, 7);
    let mut incomplete = 0;
    for phase in [2, 3, 9, 13, 16] {
        for play in [Play::LeftOut, Play::Concealed, Play::NextInItsPlace] {
            let audio = lossy(&clean, phase, play);
            let matches = recognizer.recognize(&audio);
            let phrases: Vec<Phrase> = matches.iter().map(|m| m.phrase).collect();
            let r = readings(&phrases);
            incomplete += r.iter().filter(|r| *r != "4729").count();
            assert_eq!(
                code_of(&r),
                Some("4729"),
                "phase {phase}, {play:?}: {matches:?}"
            );
            assert!(matches.iter().any(|m| m.missing > 0));
        }
    }
    println!("{incomplete} single readings of 30 lost a digit");
}

/// A phone that plays some frames twice (its jitter buffer waiting for a late one):
/// every 12th frame twice, no loss. Inserted audio is stepped over like lost audio.
#[test]
fn frames_played_twice_are_stepped_over() {
    let lib = PromptLibrary::builtin();
    let en = lib.get("en").unwrap();
    let clean = heard(&en, &[3, 8, 0, 6, 1, 5], 2, G711::Ulaw, 8);
    let mut audio = Vec::new();
    for (i, frame) in clean.chunks(FRAME).enumerate() {
        audio.extend_from_slice(frame);
        if i % 12 == 4 {
            audio.extend_from_slice(frame);
        }
    }
    let (_, r) = recognise(&lib, &audio);
    assert_eq!(code_of(&r), Some("380615"), "{r:?}");
}

#[test]
fn different_codes_are_told_apart_under_loss() {
    let lib = PromptLibrary::builtin();
    let en = lib.get("en").unwrap();
    let a = heard(&en, &[1, 1, 1, 1, 1, 1], 1, G711::Ulaw, 4);
    let b = heard(&en, &[1, 1, 1, 1, 1, 7], 1, G711::Ulaw, 4);
    let a = recognise(&lib, &lossy(&a, 5, Play::LeftOut)).1;
    let b = recognise(&lib, &lossy(&b, 5, Play::LeftOut)).1;
    assert!(a.iter().all(|r| !r.contains('7')), "{a:?}");
    assert!(b.iter().any(|r| r.ends_with('7')), "{b:?}");
}

#[test]
fn readings_combine_into_one_code_or_none() {
    let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(code_of(&r(&[])), None);
    assert_eq!(code_of(&r(&["4729", "4729"])), Some("4729"));
    assert_eq!(
        code_of(&r(&["472", "4729"])),
        Some("4729"),
        "a digit lost once"
    );
    assert_eq!(code_of(&r(&["4729", "79", "4729"])), Some("4729"));
    assert_eq!(
        code_of(&r(&["472", "479"])),
        None,
        "neither holds the other"
    );
    assert_eq!(code_of(&r(&["4729", "4728"])), None, "disagree");
    assert_eq!(code_of(&r(&["4729"])), Some("4729"));
}

#[test]
fn readings_split_on_other_phrases() {
    use Phrase::*;
    let p = [Intro, Digit(1), Digit(2), Repeat, Digit(1), Digit(3), Outro];
    assert_eq!(readings(&p), vec!["12", "13"]);
    assert!(readings(&[Intro, Outro]).is_empty());
}
