//! What `otpdial prompts check` looks for: per phrase what a listener would
//! suffer from, per pack how long a code takes to read; the report and the list
//! of problems.

use std::time::Duration;

use super::{PromptLibrary, PromptPack};
use crate::media::{CallScript, Phrase, ScriptItem, SAMPLE_RATE};

/// A 6-digit code must be read within this (issue 12), pauses included.
const MAX_READING: Duration = Duration::from_secs(6);

/// The code `prompts check` times a reading of.
const SAMPLE_CODE: [u8; 6] = [1, 2, 3, 4, 5, 6];

/// How long one reading of [`SAMPLE_CODE`] takes with this pack (intro and outro left
/// out).
fn reading_time(pack: &PromptPack) -> Duration {
    let reading = CallScript::build(pack, &SAMPLE_CODE, 1)
        .items
        .into_iter()
        .skip_while(|i| *i != ScriptItem::CodeStart)
        .take_while(|i| *i != ScriptItem::CodeEnd)
        .collect();
    CallScript { items: reading }.duration(pack)
}

/// Analysis window of [`check_phrase`]: 10 ms.
const CHECK_WINDOW: usize = 80;

/// A window more than this below the peak counts as silence (dB).
const CHECK_SILENCE_DB: f32 = 40.0;

/// A phrase whose first or last 10 ms are louder than the speech level minus this
/// starts or ends mid-sound (dB).
const CHECK_EDGE_DB: f32 = 15.0;

/// What [`check_phrase`] found in one phrase.
#[derive(Debug, Clone)]
pub struct PhraseCheck {
    /// Playing time.
    pub duration: Duration,
    /// Active speech level: mean power of the windows that are not silence, in dBFS.
    pub active_dbfs: f32,
    /// Longest silence inside the phrase (between its first and last sound).
    pub longest_gap: Duration,
    /// Share of the energy below 300 Hz, which a telephone line does not carry.
    pub below_300hz: f32,
    /// What a listener would suffer from, in words; empty when nothing.
    pub problems: Vec<String>,
}

/// Checks one phrase (8 kHz PCM as loaded) for what makes it hard to understand on a
/// phone: a clipped onset or tail (the file starts or ends mid-sound, e.g. the "f" of
/// "five" cut off), level (too quiet or too hot for G.711, flat-topped peaks), silence
/// inside (a digit that sounds like two words), a duration outside a sane range for its
/// kind (a digit under 200 ms is hard to catch, over 900 ms drags), and a spectrum whose
/// energy lies mostly below the 300 Hz the line cuts.
pub fn check_phrase(p: Phrase, pcm: &[i16]) -> PhraseCheck {
    let duration = Duration::from_micros(pcm.len() as u64 * 1_000_000 / u64::from(SAMPLE_RATE));
    let levels = Levels::of(pcm);
    let mut problems = Vec::new();
    levels.edge_problems(&mut problems);
    levels.level_problems(pcm, &mut problems);

    let longest_gap = levels.longest_gap();
    let max_gap = if p.digit().is_some() {
        Duration::from_millis(150)
    } else {
        Duration::from_millis(400)
    };
    if longest_gap > max_gap {
        problems.push(format!(
            "silence inside: {} ms (more than {} ms; a listener hears two words, or the end)",
            longest_gap.as_millis(),
            max_gap.as_millis()
        ));
    }
    problems.extend(duration_problem(p, duration));

    // Energy below 300 Hz: second-order high-pass (RBJ biquad, Q 0.707) at 300 Hz.
    let below_300hz = low_share(pcm);
    if below_300hz > 0.6 {
        problems.push(format!(
            "muffled: {:.0} % of the energy is below 300 Hz, which the phone line drops",
            below_300hz * 100.0
        ));
    }

    PhraseCheck {
        duration,
        active_dbfs: levels.active_dbfs,
        longest_gap,
        below_300hz,
        problems,
    }
}

/// dBFS of a mean power (of 16-bit samples).
fn db(power: f64) -> f32 {
    (10.0 * (power.max(1e-3) / (32768.0f64 * 32768.0)).log10()) as f32
}

/// Mean power of a run of samples.
fn power(samples: &[i16]) -> f64 {
    samples
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / samples.len() as f64
}

/// The loudness of a phrase, 10 ms window by window.
struct Levels {
    /// Each window's level, dBFS.
    windows: Vec<f32>,
    /// The largest sample's magnitude.
    peak: i32,
    /// The peak, dBFS.
    peak_db: f32,
    /// The mean level of the windows that are not silent.
    active_dbfs: f32,
}

impl Levels {
    fn of(pcm: &[i16]) -> Levels {
        let windows: Vec<f32> = pcm.chunks(CHECK_WINDOW).map(|w| db(power(w))).collect();
        let peak = pcm.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0);
        let peak_db = db(f64::from(peak) * f64::from(peak));
        let speech: Vec<f64> = pcm
            .chunks(CHECK_WINDOW)
            .zip(&windows)
            .filter(|(_, &w)| w >= peak_db - CHECK_SILENCE_DB)
            .map(|(c, _)| power(c))
            .collect();
        let active_dbfs = if speech.is_empty() {
            -120.0
        } else {
            db(speech.iter().sum::<f64>() / speech.len() as f64)
        };
        Levels {
            windows,
            peak,
            peak_db,
            active_dbfs,
        }
    }

    fn silent(&self, w: f32) -> bool {
        w < self.peak_db - CHECK_SILENCE_DB
    }

    /// Onset and tail: the first / last 10 ms should be (near) silence.
    fn edge_problems(&self, problems: &mut Vec<String>) {
        let (Some(&first), Some(&last)) = (self.windows.first(), self.windows.last()) else {
            return;
        };
        let active = self.active_dbfs;
        if self.windows.len() > 2 && first > active - CHECK_EDGE_DB {
            problems.push(format!(
                "clipped onset: starts mid-sound ({:.0} dB below the speech level in its first 10 ms; a cut consonant or a click)",
                active - first
            ));
        }
        if self.windows.len() > 2 && last > active - CHECK_EDGE_DB {
            problems.push(format!(
                "clipped tail: ends mid-sound ({:.0} dB below the speech level in its last 10 ms)",
                active - last
            ));
        }
    }

    /// Level. The loader brings every peak to -3 dBFS, so this is the crest factor: a
    /// phrase with one loud click and quiet speech ends up quiet. And clipping.
    fn level_problems(&self, pcm: &[i16], problems: &mut Vec<String>) {
        let active_dbfs = self.active_dbfs;
        if active_dbfs < -30.0 {
            problems.push(format!(
                "quiet: speech at {active_dbfs:.1} dBFS (aim for -22 to -14; a click or breath may set the peak)"
            ));
        } else if active_dbfs > -10.0 {
            problems.push(format!(
                "too hot: speech at {active_dbfs:.1} dBFS (aim for -22 to -14; compressed or clipped?)"
            ));
        }
        let peak = self.peak;
        let flat_tops = pcm
            .windows(4)
            .filter(|w| w.iter().all(|&s| i32::from(s).abs() == peak) && peak > 0)
            .count();
        if flat_tops >= 2 {
            problems.push(
                "clipping: flat-topped peaks (record or synthesise with more headroom)".to_owned(),
            );
        }
    }

    /// The longest run of silent windows between the first and the last sound.
    fn longest_gap(&self) -> Duration {
        let first_sound = self.windows.iter().position(|&w| !self.silent(w));
        let last_sound = self.windows.iter().rposition(|&w| !self.silent(w));
        let mut longest = 0usize;
        if let (Some(a), Some(b)) = (first_sound, last_sound) {
            let mut run = 0usize;
            for &w in &self.windows[a..=b] {
                run = if self.silent(w) { run + 1 } else { 0 };
                longest = longest.max(run);
            }
        }
        Duration::from_millis((longest * CHECK_WINDOW) as u64 * 1000 / u64::from(SAMPLE_RATE))
    }
}

/// A phrase too short to catch or too long for its kind.
fn duration_problem(p: Phrase, duration: Duration) -> Option<String> {
    let (lo, hi) = match p {
        Phrase::Digit(_) | Phrase::FinalDigit(_) => (200, 900),
        Phrase::Intro => (800, 3500),
        Phrase::Repeat | Phrase::Outro => (300, 2000),
        Phrase::PressKey => (1000, 5000),
        Phrase::Bind => (1500, 6000),
    };
    let d = duration.as_millis();
    if d < lo {
        Some(format!("short: {d} ms (under {lo} ms is hard to catch)"))
    } else if d > hi {
        Some(format!("long: {d} ms (over {hi} ms for this phrase)"))
    } else {
        None
    }
}

/// Share of a phrase's energy below 300 Hz (0..=1).
fn low_share(pcm: &[i16]) -> f32 {
    let w0 = 2.0 * std::f64::consts::PI * 300.0 / f64::from(SAMPLE_RATE);
    let alpha = w0.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2);
    let cos = w0.cos();
    let a0 = 1.0 + alpha;
    let (b0, b1, b2) = (
        (1.0 + cos) / 2.0 / a0,
        -(1.0 + cos) / a0,
        (1.0 + cos) / 2.0 / a0,
    );
    let (a1, a2) = (-2.0 * cos / a0, (1.0 - alpha) / a0);
    let (mut x1, mut x2, mut y1, mut y2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut all, mut high) = (0.0f64, 0.0f64);
    for &s in pcm {
        let x = f64::from(s);
        let y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
        (x2, x1, y2, y1) = (x1, x, y1, y);
        all += x * x;
        high += y * y;
    }
    if all <= 0.0 {
        return 0.0;
    }
    (1.0 - high / all).clamp(0.0, 1.0) as f32
}

impl PromptLibrary {
    /// What `otpdial prompts check` prints: per pack its pauses, then each phrase with
    /// its duration and speech level after loading (resampled, trimmed, normalised) and
    /// what a listener would suffer from ([`check_phrase`]), the length of a reading of
    /// a 6-digit code and of a whole call, and the number of problems found.
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let ms = |d: Duration| d.as_millis();
        let mut out = String::new();
        for pack in self.packs() {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{} ({}): digit pause {} ms, group pause {} ms",
                pack.locale(),
                pack.language(),
                ms(pack.digit_pause()),
                ms(pack.group_pause()),
            );
            let finals = (0..10).filter(|&d| pack.has_final(d)).count();
            let _ = writeln!(
                out,
                "  final forms of the digits: {finals} of 10{}",
                if finals < 10 {
                    " (the plain digit plays where one is missing)"
                } else {
                    ""
                }
            );
            let mut problems = 0;
            for p in pack.phrases() {
                let c = check_phrase(p, pack.pcm(p));
                problems += c.problems.len();
                let _ = writeln!(
                    out,
                    "  {} {:<15} {:>5} ms  speech {:>6.1} dBFS  {}",
                    if c.problems.is_empty() { ' ' } else { '!' },
                    p.name(),
                    ms(c.duration),
                    c.active_dbfs,
                    if c.problems.is_empty() {
                        "ok".to_owned()
                    } else {
                        c.problems.join("; ")
                    }
                );
            }
            let call = CallScript::build(pack, &SAMPLE_CODE, 2);
            let reading = reading_time(pack);
            let slow = reading > MAX_READING;
            problems += usize::from(slow);
            let _ = writeln!(
                out,
                "  {} a 6-digit code takes {:.1} s to read{}; read twice, the call has {:.1} s of audio",
                if slow { '!' } else { ' ' },
                reading.as_secs_f32(),
                if slow {
                    format!(" (more than {} s: slow down the digits less, or shorten the pauses)", MAX_READING.as_secs())
                } else {
                    String::new()
                },
                call.duration(pack).as_secs_f32()
            );
            let _ = writeln!(
                out,
                "  {problems} problem{} found{}",
                if problems == 1 { "" } else { "s" },
                if problems == 0 {
                    ""
                } else {
                    " (lines marked !; see docs/prompts.md)"
                }
            );
        }
        out
    }

    /// Every problem [`PromptLibrary::report`] marks, one line each that starts with
    /// the file to fix: `prompts/nl/7.wav: digit 7: quiet: ...`, or the pack.toml
    /// whose pauses make a code too slow to read.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pack in self.packs() {
            for p in pack.phrases() {
                let file = pack.file(p).unwrap_or_else(|| pack.toml_path());
                for problem in check_phrase(p, pack.pcm(p)).problems {
                    out.push(format!("{}: {}: {problem}", file.display(), p.name()));
                }
            }
            let reading = reading_time(pack);
            if reading > MAX_READING {
                out.push(format!(
                    "{}: a 6-digit code takes {:.1} s to read, more than {} s (shorten digit_pause or group_pause, or the digits)",
                    pack.toml_path().display(),
                    reading.as_secs_f32(),
                    MAX_READING.as_secs()
                ));
            }
        }
        out
    }
}
