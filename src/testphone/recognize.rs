//! Recognises which prompts a stretch of received audio contains, by comparing it with
//! the prompt packs' own audio (normalised cross-correlation). Pure code, no I/O.
//!
//! The gateway plays the pack's samples bit-exactly (modulo G.711 quantisation and
//! packet loss), so a waveform match is both simple and strict: a different word, or
//! the same word from another recording, correlates far below the threshold. The scan
//! aligns each template on the point where speech starts (same energy detector on
//! both sides) and tries a few samples either way.

use crate::media::{Phrase, PromptLibrary};

/// Window of the speech detector: 5 ms.
const ONSET_WINDOW: usize = 40;
/// Mean absolute amplitude that counts as speech (about -22 dBFS); the packs are
/// normalised to -3 dBFS peaks, line noise sits far below. High enough that the
/// detector fires on the steep rise of the first vowel or burst, not somewhere along a
/// weak fricative onset (the "f" of "four"), where G.711 and noise would move it by
/// more than the alignment search covers.
const ONSET_LEVEL: f32 = 2500.0;
/// Window that must be quiet for a stretch of unmatched speech to be over: 20 ms.
const QUIET_WINDOW: usize = 160;
/// Alignment search either side of the detected onset, in samples (6 ms).
const MAX_OFFSET: isize = 48;
/// Samples compared in the first pass (200 ms), before the full comparison.
const PREFIX: usize = 1600;
/// First-pass score a template needs to be compared in full.
const PREFIX_SCORE: f64 = 0.5;
/// Full-phrase score for a match. Identical audio through G.711 scores about 0.99.
pub const MATCH_SCORE: f64 = 0.8;

/// One recognised phrase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseMatch {
    /// Locale of the pack whose audio matched.
    pub locale: String,
    /// The phrase.
    pub phrase: Phrase,
    /// First sample of the phrase in the received audio.
    pub start: usize,
    /// Normalised cross-correlation, 0..=1.
    pub score: f64,
}

#[derive(Debug)]
struct Template {
    locale: String,
    phrase: Phrase,
    samples: Vec<f32>,
    /// Where the detector fires relative to the first sample; negative when the phrase
    /// starts loud, because the detector window then fires while still in the silence
    /// before it (which the received audio has and the trimmed template has not).
    onset: isize,
    energy: f64,
    prefix_energy: f64,
}

/// Templates for every phrase of every pack of a library.
#[derive(Debug)]
pub struct Recognizer {
    templates: Vec<Template>,
}

impl Recognizer {
    /// Prepares the templates (once per test phone).
    pub fn new(library: &PromptLibrary) -> Recognizer {
        let mut templates = Vec::new();
        for pack in library.packs() {
            // Every phrase the pack has (a final form it lacks plays the plain digit,
            // which is already a template).
            for phrase in pack.phrases() {
                let samples: Vec<f32> = pack.pcm(phrase).iter().map(|&s| f32::from(s)).collect();
                let mut padded = vec![0.0f32; ONSET_WINDOW];
                padded.extend_from_slice(&samples);
                let Some(onset) = find_onset(&padded, 0) else {
                    continue; // an all-silent prompt cannot be recognised
                };
                let onset = onset as isize - ONSET_WINDOW as isize;
                let energy = sum_sq(&samples);
                let prefix_energy = sum_sq(&samples[..prefix_len(&samples, onset)]);
                templates.push(Template {
                    locale: pack.locale().to_owned(),
                    phrase,
                    samples,
                    onset,
                    energy,
                    prefix_energy,
                });
            }
        }
        Recognizer { templates }
    }

    /// Finds the phrases in `audio` (8 kHz), in order.
    pub fn recognize(&self, audio: &[i16]) -> Vec<PhraseMatch> {
        let x: Vec<f32> = audio.iter().map(|&s| f32::from(s)).collect();
        // Prefix sums of squares: the energy of any window in O(1).
        let mut cum = Vec::with_capacity(x.len() + 1);
        cum.push(0.0f64);
        let mut acc = 0.0f64;
        for &v in &x {
            acc += f64::from(v) * f64::from(v);
            cum.push(acc);
        }

        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(onset) = find_onset(&x, pos) {
            match self.best_at(&x, &cum, onset) {
                Some((t, start, score)) => {
                    out.push(PhraseMatch {
                        locale: t.locale.clone(),
                        phrase: t.phrase,
                        start,
                        score,
                    });
                    pos = (start + t.samples.len()).max(onset + 1);
                }
                None => pos = end_of_speech(&x, onset),
            }
        }
        out
    }

    /// The best template for speech starting at `onset`, if it scores a match.
    fn best_at(&self, x: &[f32], cum: &[f64], onset: usize) -> Option<(&Template, usize, f64)> {
        let mut best: Option<(&Template, usize, f64)> = None;
        for t in &self.templates {
            // Pass 1: the first 200 ms at every offset; cheap, and picks the alignment.
            let prefix_len = prefix_len(&t.samples, t.onset);
            let mut aligned: Option<(usize, f64)> = None;
            for off in -MAX_OFFSET..=MAX_OFFSET {
                let Some(start) = (onset as isize - t.onset + off).try_into().ok() else {
                    continue;
                };
                let s = ncc(x, cum, start, &t.samples[..prefix_len], t.prefix_energy);
                if aligned.is_none_or(|(_, b)| s > b) {
                    aligned = Some((start, s));
                }
            }
            let Some((start, prefix_score)) = aligned else {
                continue;
            };
            if prefix_score < PREFIX_SCORE {
                continue;
            }
            // Pass 2: the whole phrase at that alignment.
            let score = ncc(x, cum, start, &t.samples, t.energy);
            if score >= MATCH_SCORE && best.is_none_or(|(_, _, b)| score > b) {
                best = Some((t, start, score));
            }
        }
        best
    }
}

/// Samples of a template compared in the first pass.
fn prefix_len(samples: &[f32], onset: isize) -> usize {
    samples.len().min(onset.max(0) as usize + PREFIX)
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&s| f64::from(s) * f64::from(s)).sum()
}

/// Normalised cross-correlation of `template` with `x[start..]`. Audio missing past the
/// end of `x` counts as silence (lowers the score), so a cut-off phrase does not match.
fn ncc(x: &[f32], cum: &[f64], start: usize, template: &[f32], t_energy: f64) -> f64 {
    let end = (start + template.len()).min(x.len());
    if start >= end || t_energy <= 0.0 {
        return 0.0;
    }
    let dot: f64 = x[start..end]
        .iter()
        .zip(template)
        .map(|(&a, &b)| f64::from(a * b))
        .sum();
    let x_energy = cum[end] - cum[start];
    if x_energy <= 0.0 {
        return 0.0;
    }
    dot / (x_energy * t_energy).sqrt()
}

/// First index at or after `from` where a 5 ms window is loud enough to be speech.
fn find_onset(x: &[f32], from: usize) -> Option<usize> {
    if x.len() < from + ONSET_WINDOW {
        return None;
    }
    let need = ONSET_LEVEL * ONSET_WINDOW as f32;
    let mut sum: f32 = x[from..from + ONSET_WINDOW].iter().map(|v| v.abs()).sum();
    let mut i = from;
    loop {
        if sum >= need {
            return Some(i);
        }
        let next = i + ONSET_WINDOW;
        if next >= x.len() {
            return None;
        }
        sum += x[next].abs() - x[i].abs();
        i += 1;
    }
}

/// First index after `from` where 20 ms are quiet (half the speech level), or the end.
fn end_of_speech(x: &[f32], from: usize) -> usize {
    let quiet = ONSET_LEVEL / 2.0 * QUIET_WINDOW as f32;
    let mut i = from;
    while i + QUIET_WINDOW <= x.len() {
        let sum: f32 = x[i..i + QUIET_WINDOW].iter().map(|v| v.abs()).sum();
        if sum < quiet {
            return i + QUIET_WINDOW;
        }
        i += QUIET_WINDOW / 4;
    }
    x.len()
}

/// Groups recognised digits into readings of the code: each run of digits between
/// other phrases ("I repeat", "Goodbye") is one reading.
pub fn readings(phrases: &[Phrase]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for p in phrases {
        match p {
            Phrase::Digit(d) | Phrase::FinalDigit(d) if *d <= 9 => {
                current.push(char::from(b'0' + d))
            }
            _ => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
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

    #[test]
    fn readings_split_on_other_phrases() {
        use Phrase::*;
        let p = [Intro, Digit(1), Digit(2), Repeat, Digit(1), Digit(3), Outro];
        assert_eq!(readings(&p), vec!["12", "13"]);
        assert!(readings(&[Intro, Outro]).is_empty());
    }
}
