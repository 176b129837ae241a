//! Recognises which prompts a stretch of received audio contains, by comparing it with
//! the prompt packs' own audio (normalised cross-correlation). Pure code, no I/O.
//!
//! The gateway plays the pack's samples bit-exactly (modulo G.711 quantisation and
//! packet loss), so a waveform match is both simple and strict: a different word, or
//! the same word from another recording, correlates far below the threshold. The scan
//! aligns each template on the point where speech starts (same energy detector on
//! both sides) and tries a few samples either way.
//!
//! Packet loss: each phrase goes out as its own 20 ms frames (its first sample starts
//! a frame), so a lost packet takes out one frame of a template. A phone that places
//! audio by RTP timestamp leaves a 20 ms gap (or a concealed frame) in its place; one
//! that plays what arrives back to back (baresip records so) drops it, and everything
//! after comes 20 ms early. The full comparison therefore aligns the template frame by
//! frame, out from where it was anchored: each frame is either present, right after the
//! previous one, or missing in place (a gap or a concealed frame), or left out (the
//! next frame taking its place), whichever correlates better, up to
//! [`MAX_MISSING_SHARE`] of the phrase. The first pass anchors on the onset and, for
//! when the frame holding it was lost, on the starts of the next frames.
//!
//! Then the readings are combined as a listener would ([`code_of`]): a digit missed in
//! one reading is taken from another, and readings that disagree give no code.

use crate::media::{Phrase, PromptLibrary, FRAME_SAMPLES};

const FRAME: usize = FRAME_SAMPLES;
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
/// Samples compared in the first pass (30 ms), from the template's onset or from the
/// start of one of the next frames: short, so that a lost frame rarely falls inside.
const PREFIX: usize = 240;
/// How far before the template's onset the first pass starts (5 ms), within its frame.
const PREFIX_LEAD: usize = 40;
/// Anchors of the first pass: the onset, and the starts of the next frames (for when
/// the frame the onset is in was lost, and the audio's onset is in a later frame).
const ANCHORS: usize = 3;
/// First-pass score a template needs to be compared in full.
const PREFIX_SCORE: f64 = 0.5;
/// Full-phrase score for a match. Identical audio through G.711 scores about 0.99.
pub const MATCH_SCORE: f64 = 0.8;
/// Most of a phrase's frames that may be missing (lost) for it to be recognised.
pub const MAX_MISSING_SHARE: f64 = 0.35;
/// Most frames left out on either side of the anchor (bounds the work).
const MAX_LEFT_OUT: usize = 20;
/// Most frames of audio inserted on either side of the anchor (a phone's jitter
/// buffer that plays a frame twice when the one after it is late or lost).
const MAX_INSERTED: usize = 10;
/// What declaring a frame missing costs, as a share of what a perfectly matching frame
/// gains: a frame is only skipped when that clearly correlates better.
const SKIP_COST: f64 = 0.15;
/// A floor under that cost, as a share of the template's mean frame energy, so that
/// near-silent frames are not declared missing for nothing.
const SKIP_FLOOR: f64 = 0.01;
/// A frame with less than this many times [`SKIP_FLOOR`] of the mean energy (5 %) is
/// near-silent: missing, it does not count against [`MAX_MISSING_SHARE`].
const SILENT_FRAME: f64 = 5.0;

/// One recognised phrase.
#[derive(Clone, Debug, PartialEq)]
pub struct PhraseMatch {
    /// Locale of the pack whose audio matched.
    pub locale: String,
    /// The phrase.
    pub phrase: Phrase,
    /// First sample of the phrase in the received audio.
    pub start: usize,
    /// Normalised cross-correlation over the frames found, 0..=1.
    pub score: f64,
    /// Frames of the phrase missing from the audio (lost packets), left out or
    /// silent/concealed in place.
    pub missing: usize,
}

/// A first-pass window of a template.
#[derive(Debug)]
struct Anchor {
    /// First sample of the window in the template.
    at: usize,
    len: usize,
    energy: f64,
    /// Where the window may start in the audio, relative to the audio's onset: where
    /// it is in the template relative to the template's onset (frames lost in place);
    /// a frame later (the audio's onset is a copy of a frame played early, in the slot
    /// of a lost one); and, for a window on a frame start, at the onset (the frames
    /// before it lost and left out, so that the audio's speech starts with it).
    starts: Vec<isize>,
}

#[derive(Debug)]
struct Template {
    locale: String,
    phrase: Phrase,
    samples: Vec<f32>,
    anchors: Vec<Anchor>,
    /// Energy of each 20 ms frame.
    frame_energy: Vec<f64>,
    /// [`SKIP_FLOOR`] of the mean frame energy.
    skip_floor: f64,
}

impl Template {
    fn new(locale: &str, phrase: Phrase, pcm: &[i16]) -> Option<Template> {
        let samples: Vec<f32> = pcm.iter().map(|&s| f32::from(s)).collect();
        let mut padded = vec![0.0f32; ONSET_WINDOW];
        padded.extend_from_slice(&samples);
        // An all-silent prompt cannot be recognised. The detector fires before the
        // first sample when the phrase starts loud (its window is still in the silence
        // before it, which the received audio has and the template has not).
        let onset = (find_onset(&padded, 0)? as isize - ONSET_WINDOW as isize).max(0) as usize;
        let frame_of_onset = onset / FRAME;
        let first = onset
            .saturating_sub(PREFIX_LEAD)
            .max(frame_of_onset * FRAME);
        let in_place = |at: usize| at as isize - onset as isize;
        let f = FRAME as isize;
        let mut anchors = vec![(first, vec![in_place(first), in_place(first) + f])];
        anchors.extend((1..ANCHORS).map(|k| {
            let at = (frame_of_onset + k) * FRAME;
            (at, vec![in_place(at), 0, in_place(at) + f])
        }));
        let anchors = anchors
            .into_iter()
            .filter(|(at, _)| *at < samples.len())
            .map(|(at, starts)| {
                let len = PREFIX.min(samples.len() - at);
                Anchor {
                    at,
                    len,
                    energy: sum_sq(&samples[at..at + len]),
                    starts,
                }
            })
            .filter(|a| a.energy > 0.0)
            .collect();
        let frame_energy: Vec<f64> = samples.chunks(FRAME).map(sum_sq).collect();
        let mean = frame_energy.iter().sum::<f64>() / frame_energy.len().max(1) as f64;
        Some(Template {
            locale: locale.to_owned(),
            phrase,
            samples,
            anchors,
            skip_floor: SKIP_FLOOR * mean,
            frame_energy,
        })
    }

    fn frames(&self) -> usize {
        self.frame_energy.len()
    }

    fn frame(&self, j: usize) -> &[f32] {
        &self.samples[j * FRAME..((j + 1) * FRAME).min(self.samples.len())]
    }
}

/// A template placed in the audio.
struct Placed<'a> {
    t: &'a Template,
    /// Where its first frame begins (or would, had it arrived).
    start: usize,
    /// Just past its last frame.
    end: usize,
    score: f64,
    missing: usize,
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
                templates.extend(Template::new(pack.locale(), phrase, pack.pcm(phrase)));
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
                Some(p) => {
                    out.push(PhraseMatch {
                        locale: p.t.locale.clone(),
                        phrase: p.t.phrase,
                        start: p.start,
                        score: p.score,
                        missing: p.missing,
                    });
                    pos = p.end.max(onset + 1);
                }
                None => pos = end_of_speech(&x, onset),
            }
        }
        out
    }

    /// The best template for speech starting at `onset`, if one scores a match.
    fn best_at(&self, x: &[f32], cum: &[f64], onset: usize) -> Option<Placed<'_>> {
        let mut best: Option<Placed<'_>> = None;
        for t in &self.templates {
            let tries = t
                .anchors
                .iter()
                .flat_map(|a| a.starts.iter().map(move |&s| (a, s)));
            for (anchor, from_onset) in tries {
                // Pass 1: the window at every offset; cheap, and picks the alignment.
                let mut aligned: Option<(usize, f64)> = None;
                let window = &t.samples[anchor.at..anchor.at + anchor.len];
                for off in -MAX_OFFSET..=MAX_OFFSET {
                    let at = onset as isize + from_onset + off;
                    let Ok(at) = usize::try_from(at) else {
                        continue;
                    };
                    let s = ncc(x, cum, at, window, anchor.energy);
                    if aligned.is_none_or(|(_, b)| s > b) {
                        aligned = Some((at, s));
                    }
                }
                let Some((at, _)) = aligned.filter(|&(_, s)| s >= PREFIX_SCORE) else {
                    continue;
                };
                // Pass 2: the whole phrase, frame by frame, out from the window's frame.
                let frame = anchor.at / FRAME;
                let frame_at = at as isize - (anchor.at - frame * FRAME) as isize;
                let Some(p) = align(t, x, cum, (frame, frame_at)) else {
                    continue;
                };
                if p.score < MATCH_SCORE {
                    continue;
                }
                if best.as_ref().is_none_or(|b| p.score > b.score) {
                    best = Some(p);
                }
                break; // placed: the later anchors are for when this one is lost
            }
        }
        best
    }
}

/// Sums along one alignment path: the objective and the parts of the score.
#[derive(Clone, Copy, Debug, Default)]
struct Path {
    objective: f64,
    dot: f64,
    x_energy: f64,
    t_energy: f64,
    missing: usize,
}

impl Path {
    /// This path with one more frame missing, at `cost`; `counts`: whether it is
    /// counted as missing (near-silent frames carry nothing and are not).
    fn skip(self, cost: f64, counts: bool) -> Path {
        Path {
            objective: self.objective - cost,
            missing: self.missing + usize::from(counts),
            ..self
        }
    }

    fn join(self, other: Path) -> Path {
        Path {
            objective: self.objective + other.objective,
            dot: self.dot + other.dot,
            x_energy: self.x_energy + other.x_energy,
            t_energy: self.t_energy + other.t_energy,
            missing: self.missing + other.missing,
        }
    }
}

/// Aligns the frames of `t` to `x` around an anchor: frame `anchor.0` of the template
/// begins at `anchor.1` in the audio. Frames after it are placed forward, frames
/// before it backward, each present, missing in place (a gap or a concealed frame:
/// the audio goes on where the frame would have ended) or left out (its neighbour
/// takes its place). Missing costs [`SKIP_COST`] of what the frame would gain. The score is the normalised
/// cross-correlation over the frames present; at most [`MAX_MISSING_SHARE`] of them may
/// be missing.
fn align<'a>(
    t: &'a Template,
    x: &[f32],
    cum: &[f64],
    anchor: (usize, isize),
) -> Option<Placed<'a>> {
    let (a, a_at) = anchor;
    let frames = t.frames();
    // The audio's level over the template's, over the stretch the phrase would take:
    // a few frames lost or replaced barely move it.
    let from = usize::try_from(a_at - (a * FRAME) as isize)
        .unwrap_or(0)
        .min(x.len());
    let to = usize::try_from(a_at + ((frames - a) * FRAME) as isize)
        .unwrap_or(0)
        .clamp(from, x.len());
    let gain = ((cum[to] - cum[from]) / t.frame_energy.iter().sum::<f64>())
        .sqrt()
        .max(1e-6);
    let budget = (frames as f64 * MAX_MISSING_SHARE) as usize;
    let after = walk(
        t,
        x,
        cum,
        gain,
        (a..frames).map(|j| (j, a_at + ((j - a) * FRAME) as isize)),
        1,
    );
    let before = walk(
        t,
        x,
        cum,
        gain,
        (0..a).rev().map(|j| (j, a_at - ((a - j) * FRAME) as isize)),
        -1,
    );
    let ((d_after, after), (d_before, before)) = (after?, before?);
    let path = after.join(before);
    if path.missing > budget || path.x_energy <= 0.0 || path.t_energy <= 0.0 {
        return None;
    }
    let f = FRAME as isize;
    let start = a_at - (a as isize - d_before) * f;
    let end = a_at
        + (frames as isize - 1 - a as isize - d_after) * f
        + t.frame(frames - 1).len() as isize;
    Some(Placed {
        t,
        start: usize::try_from(start).unwrap_or(0),
        end: usize::try_from(end).unwrap_or(0).min(x.len()),
        score: path.dot / (path.x_energy * path.t_energy).sqrt(),
        missing: path.missing,
    })
}

/// The dynamic programme of [`align`] in one direction: `frames` yields each frame with
/// where it begins if nothing before it (in walking order) was left out or inserted.
/// Each frame left out moves the rest by a frame towards the anchor, each frame of
/// audio inserted (a phone that played a frame twice) by a frame away from it (`dir`
/// 1: forward, -1: backward). Returns the net shift in frames and the best path.
fn walk(
    t: &Template,
    x: &[f32],
    cum: &[f64],
    gain: f64,
    frames: impl Iterator<Item = (usize, isize)>,
    dir: isize,
) -> Option<(isize, Path)> {
    let left_out = MAX_LEFT_OUT.min((t.frames() as f64 * MAX_MISSING_SHARE) as usize);
    let states = MAX_INSERTED + 1 + left_out;
    let shift = |k: usize| k as isize - MAX_INSERTED as isize;
    // paths[k]: the best path so far with a net shift of shift(k) frames.
    let mut paths: Vec<Option<Path>> = vec![None; states];
    paths[MAX_INSERTED] = Some(Path::default());
    let mut next: Vec<Option<Path>> = vec![None; states];
    for (j, at) in frames {
        let frame = t.frame(j);
        let cost = gain * (SKIP_COST * t.frame_energy[j] + t.skip_floor);
        // What the frame does to the score when present, to first order around a
        // score of MATCH_SCORE: its correlation gained, its energies (audio and
        // template, on one scale) spent. A matching frame gains; a gap or a
        // concealed frame in its place costs more than declaring it missing.
        let spent = 0.5 * MATCH_SCORE * gain * t.frame_energy[j];
        let counts = t.frame_energy[j] > t.skip_floor * SILENT_FRAME;
        let present = |p: Path, k: usize| {
            let pos = at - dir * shift(k) * FRAME as isize;
            let (dot, x_energy) = match usize::try_from(pos) {
                Ok(pos) => window(x, cum, pos, frame),
                Err(_) => (0.0, 0.0),
            };
            Path {
                objective: p.objective + dot - spent - 0.5 * MATCH_SCORE * x_energy / gain,
                dot: p.dot + dot,
                x_energy: p.x_energy + x_energy,
                t_energy: p.t_energy + t.frame_energy[j],
                missing: p.missing,
            }
        };
        next.fill(None);
        for (k, p) in paths.iter().enumerate() {
            let Some(p) = *p else { continue };
            let skipped = p.skip(cost, counts);
            let mut cands = vec![(k, present(p, k)), (k, skipped), (k + 1, skipped)];
            if k > 0 {
                cands.push((k - 1, present(p.skip(cost, true), k - 1)));
            }
            for (k, cand) in cands {
                if k < states && next[k].is_none_or(|n| cand.objective > n.objective) {
                    next[k] = Some(cand);
                }
            }
        }
        std::mem::swap(&mut paths, &mut next);
    }
    paths
        .iter()
        .enumerate()
        .filter_map(|(k, p)| p.map(|p| (shift(k), p)))
        .max_by(|a, b| a.1.objective.total_cmp(&b.1.objective))
}

/// Dot product of `frame` with `x[at..]` and the energy of that stretch of `x`; audio
/// missing past the end of `x` counts as silence.
fn window(x: &[f32], cum: &[f64], at: usize, frame: &[f32]) -> (f64, f64) {
    let end = (at + frame.len()).min(x.len());
    if at >= end {
        return (0.0, 0.0);
    }
    let dot: f64 = x[at..end]
        .iter()
        .zip(frame)
        .map(|(&a, &b)| f64::from(a * b))
        .sum();
    (dot, cum[end] - cum[at])
}

fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&s| f64::from(s) * f64::from(s)).sum()
}

/// Normalised cross-correlation of `template` with `x[start..]`. Audio missing past the
/// end of `x` counts as silence (lowers the score), so a cut-off phrase does not match.
fn ncc(x: &[f32], cum: &[f64], start: usize, template: &[f32], t_energy: f64) -> f64 {
    if t_energy <= 0.0 {
        return 0.0;
    }
    let (dot, x_energy) = window(x, cum, start, template);
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

/// The code the readings agree on: the longest reading, when every other reading is
/// that one with digits missing (a digit lost in one repetition is heard in another).
/// None without readings, or when two readings disagree on a digit or neither holds
/// the other.
pub fn code_of(readings: &[String]) -> Option<&str> {
    let longest = readings.iter().max_by_key(|r| r.len())?;
    readings
        .iter()
        .all(|r| is_subsequence(r, longest))
        .then_some(longest.as_str())
}

/// Whether `short` is `long` with some characters left out.
fn is_subsequence(short: &str, long: &str) -> bool {
    let mut rest = long.chars();
    short.chars().all(|c| rest.by_ref().any(|l| l == c))
}

#[cfg(test)]
mod tests;
