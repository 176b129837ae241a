//! Prompt packs: one locale's phrases, decoded and G.711-encoded once at load.
//!
//! A pack is a directory `prompts/<locale>/` with `pack.toml` and one WAV per phrase
//! (SPEC §5), plus optional final forms of the digits (`5-final.wav`: the digit as said
//! at the end of a group, with falling intonation; `5.wav` is the form said inside a
//! group). A missing final form falls back to the plain digit. See docs/prompts.md. Everything a call needs later is precomputed here, so the pacer only
//! copies 160-byte frames that already exist (DESIGN principle 7). Each phrase is
//! resampled to 8 kHz, trimmed of leading and trailing silence (keeping weak consonants
//! and 20 ms either side) and brought to a -3 dBFS peak at load, so an operator can drop in studio recordings as they come.
//!
//! Depends on hound (PCM WAV; G.711 WAV is read here), rubato (resampling to 8 kHz),
//! toml/serde (pack.toml), humantime (durations).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{g711, Phrase, FRAME_SAMPLES, G711, SAMPLE_RATE};

/// Longest phrase accepted; keeps a wrong file (a whole song) from eating memory.
const MAX_PHRASE_SECONDS: u32 = 60;
/// Sample rates accepted, telephone band to studio. Outside it a header is broken, and
/// the resampler's buffers grow with the rate: 4 GHz asked for 17 GB (fuzzer), 1 Hz
/// took seconds.
const WAV_RATES: std::ops::RangeInclusive<u32> = 4_000..=384_000;
/// Longest pause accepted in pack.toml.
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Peak level every phrase is brought to: -3 dBFS, as `prompts/build.sh` makes them,
/// so that digits recorded on different days sound equally loud.
const TARGET_PEAK: f32 = 23_197.0;
/// Phrases whose peak is already within ±1 dB of the target are left untouched, so a
/// pack that is already normalised (and a G.711 file) plays back bit-exact.
const PEAK_TOLERANCE_DB: f32 = 1.0;
/// A phrase whose peak is below this (-60 dBFS) is silence: a broken recording.
const MIN_PEAK: i32 = 33;
/// Trimming looks at 10 ms windows.
const TRIM_WINDOW: usize = 80;
/// A window counts as sound when it is within 50 dB of the loudest window (power
/// ratio 10^5), so the weak first consonant of "five", "six", "seven" or "zero" is kept...
const TRIM_BELOW_PEAK: f64 = 1e5;
/// ...and more than 10 dB above the noise at the file's edges (its first or last 10 ms,
/// whichever is quieter), so room noise in a recording is trimmed all the same...
const TRIM_ABOVE_NOISE: f64 = 10.0;
/// ...but the noise never raises the threshold above 30 dB below the loudest window
/// (a file that starts mid-word must not lose the word).
const TRIM_NOISE_CAP: f64 = 1e3;
/// Kept before the first and after the last sound window: 20 ms, so onsets and
/// releases are not cut.
const TRIM_MARGIN: usize = 160;

/// Why a prompt pack could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// A file or directory could not be read. The OS error is the source, so it is
    /// not repeated in the message (`{e:#}` prints both once).
    #[error("{}: cannot read", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// pack.toml is malformed or has a bad value.
    #[error("{}: {message}", path.display())]
    Config {
        /// The pack.toml file.
        path: PathBuf,
        /// What is wrong, naming the key where there is one.
        message: String,
    },
    /// A WAV file is unreadable or in a format we do not take.
    #[error("{}: {message}", path.display())]
    Wav {
        /// The WAV file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The directory has no subdirectory with a pack.toml.
    #[error("{}: no prompt pack found (expected <locale>/pack.toml below it)", dir.display())]
    NoPacks {
        /// The directory searched.
        dir: PathBuf,
    },
}

/// pack.toml as written by operators.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackToml {
    language: String,
    #[serde(default = "default_digit_pause")]
    digit_pause: String,
    #[serde(default = "default_group_pause")]
    group_pause: String,
    #[serde(default)]
    files: FilesToml,
}

fn default_digit_pause() -> String {
    "400ms".to_owned()
}

fn default_group_pause() -> String {
    "800ms".to_owned()
}

/// `[files]`: every key defaults to the conventional file name, so a pack of
/// conventionally named files needs only `language`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FilesToml {
    intro: String,
    repeat: String,
    outro: String,
    press_key: String,
    /// The `bind_digits` request. When absent, `bind.wav` is used where it exists;
    /// without one the pack cannot serve `bind_digits`.
    bind: Option<String>,
    digits: Vec<String>,
    /// Final forms of the digits. When absent, `<d>-final.wav` is used where that file
    /// exists and the plain digit where it does not.
    digits_final: Option<Vec<String>>,
}

impl Default for FilesToml {
    fn default() -> Self {
        FilesToml {
            intro: "intro.wav".to_owned(),
            repeat: "repeat.wav".to_owned(),
            outro: "outro.wav".to_owned(),
            press_key: "press-key.wav".to_owned(),
            bind: None,
            digits: (0..10).map(|d| format!("{d}.wav")).collect(),
            digits_final: None,
        }
    }
}

/// One phrase, in every form the rest of the program asks for.
struct PhraseAudio {
    /// The file it was read from (named in `prompts check` problems).
    file: PathBuf,
    pcm: Vec<i16>,
    ulaw: Vec<[u8; FRAME_SAMPLES]>,
    alaw: Vec<[u8; FRAME_SAMPLES]>,
}

// By hand: a derived Debug would print every sample of every phrase into a log line.
impl std::fmt::Debug for PhraseAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhraseAudio")
            .field("samples", &self.pcm.len())
            .field("frames", &self.ulaw.len())
            .finish()
    }
}

impl PhraseAudio {
    fn new(pcm: Vec<i16>, file: PathBuf) -> PhraseAudio {
        let ulaw = encode_frames(G711::Ulaw, &pcm);
        let alaw = encode_frames(G711::Alaw, &pcm);
        PhraseAudio {
            file,
            pcm,
            ulaw,
            alaw,
        }
    }
}

/// Splits PCM into 20 ms frames; the last one is padded with the law's silence code.
fn encode_frames(codec: G711, pcm: &[i16]) -> Vec<[u8; FRAME_SAMPLES]> {
    pcm.chunks(FRAME_SAMPLES)
        .map(|chunk| {
            let mut frame = [codec.silence(); FRAME_SAMPLES];
            for (out, &s) in frame.iter_mut().zip(chunk) {
                *out = g711::encode_sample(codec, s);
            }
            frame
        })
        .collect()
}

/// One locale's prompts, ready to play.
#[derive(Debug)]
pub struct PromptPack {
    /// Its pack.toml (`<builtin>/prompts/<locale>/pack.toml` for a built-in pack).
    toml_path: PathBuf,
    locale: String,
    language: String,
    digit_pause: Duration,
    group_pause: Duration,
    /// Indexed by [`Phrase::index`]; always [`Phrase::ALL`]`.len()` entries.
    phrases: Vec<PhraseAudio>,
    /// Final forms of digits 0..=9; `None` where the pack has none (plain digit plays).
    finals: Vec<Option<PhraseAudio>>,
    /// [`Phrase::Bind`], when the pack has it.
    bind: Option<PhraseAudio>,
}

impl PromptPack {
    /// The locale (directory name), e.g. `nl`.
    pub fn locale(&self) -> &str {
        &self.locale
    }

    /// Human name of the language from pack.toml, e.g. `Nederlands`.
    pub fn language(&self) -> &str {
        &self.language
    }

    /// 8 kHz 16-bit mono samples of a phrase (empty for a digit above 9).
    pub fn pcm(&self, p: Phrase) -> &[i16] {
        self.audio(p).map_or(&[], |a| a.pcm.as_slice())
    }

    /// The phrase as 20 ms G.711 frames (empty for a digit above 9).
    pub fn frames(&self, p: Phrase, codec: G711) -> &[[u8; FRAME_SAMPLES]] {
        self.audio(p).map_or(&[], |a| match codec {
            G711::Ulaw => a.ulaw.as_slice(),
            G711::Alaw => a.alaw.as_slice(),
        })
    }

    /// The file a phrase was read from (None for a digit above 9); a final form the
    /// pack lacks is the plain digit's file.
    pub fn file(&self, p: Phrase) -> Option<&Path> {
        self.audio(p).map(|a| a.file.as_path())
    }

    /// Its pack.toml, which sets the pauses.
    pub fn toml_path(&self) -> &Path {
        &self.toml_path
    }

    /// Whether the pack has its own final form of digit `d` (else the plain one plays).
    pub fn has_final(&self, d: u8) -> bool {
        self.finals.get(usize::from(d)).is_some_and(|f| f.is_some())
    }

    /// Whether the pack has the optional [`Phrase::Bind`] (needed for `bind_digits`).
    pub fn has_bind(&self) -> bool {
        self.bind.is_some()
    }

    /// Every phrase the pack holds audio of: [`Phrase::ALL`], then the final forms it
    /// has, then [`Phrase::Bind`] if it has it.
    pub fn phrases(&self) -> impl Iterator<Item = Phrase> + '_ {
        Phrase::ALL
            .into_iter()
            .chain(
                Phrase::FINAL_DIGITS
                    .into_iter()
                    .filter(|p| p.digit().is_some_and(|d| self.has_final(d))),
            )
            .chain(self.bind.as_ref().map(|_| Phrase::Bind))
    }

    /// Playing time of a phrase (for `otpdial prompts check`).
    pub fn duration(&self, p: Phrase) -> Duration {
        let samples = self.pcm(p).len() as u64;
        Duration::from_micros(samples * 1_000_000 / u64::from(SAMPLE_RATE))
    }

    /// Silence between two digits of a group.
    pub fn digit_pause(&self) -> Duration {
        self.digit_pause
    }

    /// Silence between two groups of digits.
    pub fn group_pause(&self) -> Duration {
        self.group_pause
    }

    fn audio(&self, p: Phrase) -> Option<&PhraseAudio> {
        match p {
            Phrase::FinalDigit(d) => match self.finals.get(usize::from(d)) {
                Some(Some(f)) => Some(f),
                Some(None) => self.audio(Phrase::Digit(d)),
                None => None,
            },
            Phrase::Bind => self.bind.as_ref(),
            _ => p.index().and_then(|i| self.phrases.get(i)),
        }
    }

    /// Loads a pack from `pack.toml` text, fetching each named file through `read`.
    /// `origin` is the pack's directory (or a pseudo path for the embedded packs) and
    /// is used in error messages only.
    fn parse(
        locale: &str,
        origin: &Path,
        toml_text: &str,
        read: &dyn Fn(&str) -> Result<Vec<u8>, PromptError>,
    ) -> Result<PromptPack, PromptError> {
        let toml_path = origin.join("pack.toml");
        let config_err = |message: String| PromptError::Config {
            path: toml_path.clone(),
            message,
        };
        let cfg: PackToml = toml::from_str(toml_text).map_err(|e| config_err(e.to_string()))?;
        if cfg.language.trim().is_empty() {
            return Err(config_err("`language` must not be empty".to_owned()));
        }
        let digit_pause = parse_pause("digit_pause", &cfg.digit_pause).map_err(config_err)?;
        let group_pause = parse_pause("group_pause", &cfg.group_pause).map_err(config_err)?;
        if cfg.files.digits.len() != 10 {
            return Err(config_err(format!(
                "`files.digits` must name 10 files (0 to 9), found {}",
                cfg.files.digits.len()
            )));
        }

        let mut phrases = Vec::with_capacity(Phrase::ALL.len());
        for p in Phrase::ALL {
            let name = match p {
                Phrase::Digit(d) => cfg.files.digits.get(usize::from(d)),
                Phrase::Intro => Some(&cfg.files.intro),
                Phrase::Repeat => Some(&cfg.files.repeat),
                Phrase::Outro => Some(&cfg.files.outro),
                Phrase::PressKey => Some(&cfg.files.press_key),
                Phrase::FinalDigit(_) | Phrase::Bind => None, // not in ALL
            };
            let Some(name) = name else {
                return Err(config_err(format!("no file named for {p:?}")));
            };
            check_file_name(name).map_err(config_err)?;
            let path = origin.join(name);
            let bytes = read(name)?;
            let pcm = decode_wav(&path, &bytes)?;
            phrases.push(PhraseAudio::new(pcm, path));
        }

        // Final forms: named in pack.toml (then required), or by convention (optional).
        let (final_names, required): (Vec<String>, bool) = match &cfg.files.digits_final {
            Some(names) if names.len() == 10 => (names.clone(), true),
            Some(names) => {
                return Err(config_err(format!(
                    "`files.digits_final` must name 10 files (0 to 9), found {}",
                    names.len()
                )))
            }
            None => ((0..10).map(|d| format!("{d}-final.wav")).collect(), false),
        };
        // An optional phrase: a missing file is fine unless pack.toml named it.
        let optional = |name: &str, required: bool| -> Result<Option<PhraseAudio>, PromptError> {
            check_file_name(name).map_err(config_err)?;
            let bytes = match read(name) {
                Ok(bytes) => bytes,
                Err(PromptError::Io { source, .. })
                    if !required && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let path = origin.join(name);
            let pcm = decode_wav(&path, &bytes)?;
            Ok(Some(PhraseAudio::new(pcm, path)))
        };
        let finals = final_names
            .iter()
            .map(|name| optional(name, required))
            .collect::<Result<Vec<_>, _>>()?;
        let bind = match &cfg.files.bind {
            Some(name) => optional(name, true)?,
            None => optional("bind.wav", false)?,
        };

        Ok(PromptPack {
            toml_path,
            locale: locale.to_owned(),
            language: cfg.language,
            digit_pause,
            group_pause,
            phrases,
            finals,
            bind,
        })
    }
}

fn parse_pause(key: &str, text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{key}` = {text:?} is not a duration ({e}); write e.g. \"400ms\""))?;
    if d > MAX_PAUSE {
        return Err(format!(
            "`{key}` = {text:?} is longer than {}s",
            MAX_PAUSE.as_secs()
        ));
    }
    Ok(d)
}

/// Pack files live in the pack directory; a path would let pack.toml read anything.
fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file name {name:?} must be a plain file name in the pack directory"
        ))
    }
}

/// Decodes one phrase's WAV file, given as bytes, to 8 kHz mono i16, trimmed and
/// level-normalised: what a pack load does with each file it reads. `path` only names
/// the file in errors.
///
/// Accepts mono 16-bit integer PCM at any rate (resampled here, once, at load) and
/// mono G.711 µ-law/A-law WAV (format tags 7/6, which hound does not read).
pub fn decode_wav(path: &Path, bytes: &[u8]) -> Result<Vec<i16>, PromptError> {
    let wav_err = |message: String| PromptError::Wav {
        path: path.to_path_buf(),
        message,
    };
    let (pcm, rate) = match g711_wav(bytes) {
        Some(g) => {
            let g = g.map_err(wav_err)?;
            (g711::decode(g.codec, g.data), g.rate)
        }
        None => decode_pcm_wav(bytes).map_err(wav_err)?,
    };
    if !WAV_RATES.contains(&rate) {
        return Err(wav_err(format!(
            "declares a sample rate of {rate} Hz; prompts must be 4 kHz to 384 kHz"
        )));
    }
    if pcm.is_empty() {
        return Err(wav_err("has no samples".to_owned()));
    }
    if pcm.len() as u64 > u64::from(MAX_PHRASE_SECONDS) * u64::from(rate) {
        return Err(wav_err(format!(
            "is longer than {MAX_PHRASE_SECONDS} s; a prompt is one short phrase"
        )));
    }
    let pcm = if rate == SAMPLE_RATE {
        pcm
    } else {
        resample(&pcm, rate).map_err(|e| wav_err(format!("cannot resample from {rate} Hz: {e}")))?
    };
    condition(&pcm).map_err(wav_err)
}

/// Trims leading and trailing silence (the script inserts its own pauses, so silence
/// in a file would make those uneven) and brings the peak to -3 dBFS.
fn condition(pcm: &[i16]) -> Result<Vec<i16>, String> {
    let peak = pcm.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0);
    if peak < MIN_PEAK {
        return Err("is silent (peak below -60 dBFS)".to_owned());
    }
    let (first, end) = sound_span(pcm);
    let kept = &pcm[first.saturating_sub(TRIM_MARGIN)..(end + TRIM_MARGIN).min(pcm.len())];

    let peak_db = 20.0 * (peak as f32 / TARGET_PEAK).log10();
    if peak_db.abs() <= PEAK_TOLERANCE_DB {
        return Ok(kept.to_vec());
    }
    let gain = TARGET_PEAK / peak as f32;
    Ok(kept
        .iter()
        // The cast saturates; the clamp only states the intent.
        .map(|&s| (f32::from(s) * gain).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// The span `first..end` of samples from the first to the last 10 ms window that is
/// sound ([`TRIM_BELOW_PEAK`], [`TRIM_ABOVE_NOISE`], [`TRIM_NOISE_CAP`]); the whole
/// file when none is.
fn sound_span(pcm: &[i16]) -> (usize, usize) {
    let power: Vec<f64> = pcm
        .chunks(TRIM_WINDOW)
        .map(|w| w.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / w.len() as f64)
        .collect();
    let loudest = power.iter().copied().fold(0.0f64, f64::max);
    let edge_noise = match (power.first(), power.last()) {
        (Some(a), Some(b)) => a.min(*b),
        _ => 0.0,
    };
    let threshold = (loudest / TRIM_BELOW_PEAK)
        .max((edge_noise * TRIM_ABOVE_NOISE).min(loudest / TRIM_NOISE_CAP));
    let sound = |p: &f64| *p > threshold;
    match (power.iter().position(sound), power.iter().rposition(sound)) {
        (Some(a), Some(b)) => (a * TRIM_WINDOW, ((b + 1) * TRIM_WINDOW).min(pcm.len())),
        _ => (0, pcm.len()),
    }
}

/// Mono 16-bit integer PCM through hound: the samples and their rate.
fn decode_pcm_wav(bytes: &[u8]) -> Result<(Vec<i16>, u32), String> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable WAV file: {e}"))?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(format!(
            "has {} channels; prompts must be mono (sox in.wav -c 1 out.wav)",
            spec.channels
        ));
    }
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(format!(
            "has {}-bit {kind} samples; prompts must be 16-bit PCM or G.711 (sox in.wav -b 16 -e signed-integer out.wav)",
            spec.bits_per_sample
        ));
    }
    if spec.sample_rate == 0 {
        return Err("declares a sample rate of 0 Hz".to_owned());
    }
    // Checked before reading the samples, so a huge file is refused cheaply.
    if u64::from(reader.duration()) > u64::from(MAX_PHRASE_SECONDS) * u64::from(spec.sample_rate) {
        return Err(format!(
            "is longer than {MAX_PHRASE_SECONDS} s; a prompt is one short phrase"
        ));
    }
    let pcm = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|e| format!("corrupt sample data: {e}"))?;
    Ok((pcm, spec.sample_rate))
}

/// The parts of a G.711 WAV file we need.
struct G711Wav<'a> {
    codec: G711,
    rate: u32,
    data: &'a [u8],
}

/// Reads a RIFF/WAVE file whose format tag is A-law (6) or µ-law (7). `None` when the
/// file is not such a file (then hound gets it, and gives the error if any); an error
/// when it is one but unusable.
fn g711_wav(bytes: &[u8]) -> Option<Result<G711Wav<'_>, String>> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return None;
    }
    let mut pos = 12;
    let mut format: Option<(G711, u16, u32, u16)> = None;
    while let (Some(id), Some(size)) = (bytes.get(pos..pos + 4), u32_at(bytes, pos + 4)) {
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(size as usize);
        let body = &bytes[body_start.min(bytes.len())..body_end.min(bytes.len())];
        if id == b"fmt " {
            let codec = match u16_at(body, 0) {
                Some(6) => G711::Alaw,
                Some(7) => G711::Ulaw,
                _ => return None, // PCM or other: hound's business
            };
            let (Some(channels), Some(rate), Some(bits)) =
                (u16_at(body, 2), u32_at(body, 4), u16_at(body, 14))
            else {
                return Some(Err("G.711 WAV with a truncated fmt chunk".to_owned()));
            };
            format = Some((codec, channels, rate, bits));
        } else if id == b"data" {
            // data before fmt: not a file we understand; let hound report it.
            let (codec, channels, rate, bits) = format?;
            if channels != 1 {
                return Some(Err(format!(
                    "has {channels} channels; prompts must be mono"
                )));
            }
            if bits != 8 || rate == 0 {
                return Some(Err(format!(
                    "G.711 WAV with {bits} bits per sample at {rate} Hz; expected 8 bits"
                )));
            }
            return Some(Ok(G711Wav {
                codec,
                rate,
                data: body,
            }));
        }
        // Chunks are padded to an even length.
        pos = body_end.saturating_add(body_end % 2);
    }
    format.map(|_| Err("G.711 WAV without a data chunk".to_owned()))
}

/// Converts a phrase to 8 kHz (FFT resampler, anti-aliased), once at load.
fn resample(pcm: &[i16], rate: u32) -> Result<Vec<i16>, String> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};

    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut resampler = Fft::<f32>::new(
        rate as usize,
        SAMPLE_RATE as usize,
        1024,
        1,
        FixedSync::Both,
    )
    .map_err(|e| e.to_string())?;
    let adapter = InterleavedSlice::new(&input, 1, input.len()).map_err(|e| e.to_string())?;
    let out = resampler
        .process_all(&adapter, input.len(), None)
        .map_err(|e| e.to_string())?;
    Ok(out
        .take_data()
        .into_iter()
        // The cast saturates; clamp first only to make the intent explicit.
        .map(|v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}

/// A 6-digit code must be read within this (issue 12), pauses included.
const MAX_READING: Duration = Duration::from_secs(6);

/// The code `prompts check` times a reading of.
const SAMPLE_CODE: [u8; 6] = [1, 2, 3, 4, 5, 6];

/// How long one reading of [`SAMPLE_CODE`] takes with this pack (intro and outro left
/// out).
fn reading_time(pack: &PromptPack) -> Duration {
    let reading = super::CallScript::build(pack, &SAMPLE_CODE, 1)
        .items
        .into_iter()
        .skip_while(|i| *i != super::ScriptItem::CodeStart)
        .take_while(|i| *i != super::ScriptItem::CodeEnd)
        .collect();
    super::CallScript { items: reading }.duration(pack)
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
    let mut problems = Vec::new();
    let db = |power: f64| (10.0 * (power.max(1e-3) / (32768.0f64 * 32768.0)).log10()) as f32;
    let windows: Vec<f32> = pcm
        .chunks(CHECK_WINDOW)
        .map(|w| {
            let power =
                w.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / w.len() as f64;
            db(power)
        })
        .collect();
    let peak = pcm.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0);
    let peak_db = db(f64::from(peak) * f64::from(peak));
    let silent = |w: f32| w < peak_db - CHECK_SILENCE_DB;
    let speech: Vec<f64> = pcm
        .chunks(CHECK_WINDOW)
        .zip(&windows)
        .filter(|(_, &w)| !silent(w))
        .map(|(c, _)| c.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / c.len() as f64)
        .collect();
    let active_dbfs = if speech.is_empty() {
        -120.0
    } else {
        db(speech.iter().sum::<f64>() / speech.len() as f64)
    };

    // Onset and tail: the first / last 10 ms should be (near) silence.
    if let (Some(&first), Some(&last)) = (windows.first(), windows.last()) {
        if windows.len() > 2 && first > active_dbfs - CHECK_EDGE_DB {
            problems.push(format!(
                "clipped onset: starts mid-sound ({:.0} dB below the speech level in its first 10 ms; a cut consonant or a click)",
                active_dbfs - first
            ));
        }
        if windows.len() > 2 && last > active_dbfs - CHECK_EDGE_DB {
            problems.push(format!(
                "clipped tail: ends mid-sound ({:.0} dB below the speech level in its last 10 ms)",
                active_dbfs - last
            ));
        }
    }

    // Level. The loader brings every peak to -3 dBFS, so this is the crest factor: a
    // phrase with one loud click and quiet speech ends up quiet.
    if active_dbfs < -30.0 {
        problems.push(format!(
            "quiet: speech at {active_dbfs:.1} dBFS (aim for -22 to -14; a click or breath may set the peak)"
        ));
    } else if active_dbfs > -10.0 {
        problems.push(format!(
            "too hot: speech at {active_dbfs:.1} dBFS (aim for -22 to -14; compressed or clipped?)"
        ));
    }
    let flat_tops = pcm
        .windows(4)
        .filter(|w| w.iter().all(|&s| i32::from(s).abs() == peak) && peak > 0)
        .count();
    if flat_tops >= 2 {
        problems.push(
            "clipping: flat-topped peaks (record or synthesise with more headroom)".to_owned(),
        );
    }

    // Silence inside: the longest run of silent windows between the first and last sound.
    let first_sound = windows.iter().position(|&w| !silent(w));
    let last_sound = windows.iter().rposition(|&w| !silent(w));
    let mut longest = 0usize;
    if let (Some(a), Some(b)) = (first_sound, last_sound) {
        let mut run = 0usize;
        for &w in &windows[a..=b] {
            run = if silent(w) { run + 1 } else { 0 };
            longest = longest.max(run);
        }
    }
    let longest_gap =
        Duration::from_millis((longest * CHECK_WINDOW) as u64 * 1000 / u64::from(SAMPLE_RATE));
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

    // Duration for the kind of phrase.
    let (lo, hi) = match p {
        Phrase::Digit(_) | Phrase::FinalDigit(_) => (200, 900),
        Phrase::Intro => (800, 3500),
        Phrase::Repeat | Phrase::Outro => (300, 2000),
        Phrase::PressKey => (1000, 5000),
        Phrase::Bind => (1500, 6000),
    };
    let d = duration.as_millis();
    if d < lo {
        problems.push(format!("short: {d} ms (under {lo} ms is hard to catch)"));
    } else if d > hi {
        problems.push(format!("long: {d} ms (over {hi} ms for this phrase)"));
    }

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
        active_dbfs,
        longest_gap,
        below_300hz,
        problems,
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

/// All loaded packs, by locale.
#[derive(Debug, Clone, Default)]
pub struct PromptLibrary {
    packs: BTreeMap<String, Arc<PromptPack>>,
}

/// The packs shipped in `prompts/`, compiled into the binary.
macro_rules! embedded_pack {
    ($locale:literal) => {
        (
            $locale,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/", $locale, "/pack.toml")),
            embedded_pack!(@files $locale, "0.wav", "1.wav", "2.wav", "3.wav", "4.wav", "5.wav",
                "6.wav", "7.wav", "8.wav", "9.wav", "intro.wav", "repeat.wav", "outro.wav",
                "press-key.wav", "bind.wav", "0-final.wav", "1-final.wav", "2-final.wav", "3-final.wav",
                "4-final.wav", "5-final.wav", "6-final.wav", "7-final.wav", "8-final.wav",
                "9-final.wav"),
        )
    };
    (@files $locale:literal, $($file:literal),*) => {
        &[$(($file, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/", $locale, "/", $file)) as &[u8])),*]
    };
}

type EmbeddedPack = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static [u8])],
);

const EMBEDDED: [EmbeddedPack; 2] = [embedded_pack!("en"), embedded_pack!("nl")];

impl PromptLibrary {
    /// Loads every subdirectory of `dir` that has a `pack.toml`; the subdirectory's
    /// name is the locale. Any broken pack fails the whole load (start-up error).
    ///
    /// `dir` may also be one pack's own directory (it has a `pack.toml`, e.g.
    /// `prompts/nl`): then that pack alone is loaded, its directory name the locale.
    pub fn load_dir(dir: &Path) -> Result<PromptLibrary, PromptError> {
        let io_err = |path: &Path, source| PromptError::Io {
            path: path.to_path_buf(),
            source,
        };
        let load_one = |sub: &Path, name: &std::ffi::OsStr| {
            let toml_path = sub.join("pack.toml");
            let Some(locale) = name.to_str().map(str::to_owned) else {
                return Err(PromptError::Config {
                    path: toml_path,
                    message: "the pack directory name (the locale) is not UTF-8".to_owned(),
                });
            };
            let text = std::fs::read_to_string(&toml_path).map_err(|e| io_err(&toml_path, e))?;
            let read = |name: &str| {
                let path = sub.join(name);
                std::fs::read(&path).map_err(|e| io_err(&path, e))
            };
            let pack = PromptPack::parse(&locale, sub, &text, &read)?;
            Ok((locale, Arc::new(pack)))
        };
        let mut packs = BTreeMap::new();
        if dir.join("pack.toml").is_file() {
            // One pack's folder. Its name: the last component, also for `prompts/nl/.`.
            let canonical = dir.canonicalize().map_err(|e| io_err(dir, e))?;
            let name = canonical.file_name().unwrap_or(canonical.as_os_str());
            let (locale, pack) = load_one(dir, name)?;
            packs.insert(locale, pack);
            return Ok(PromptLibrary { packs });
        }
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let sub = entry.path();
            if !sub.is_dir() || !sub.join("pack.toml").is_file() {
                continue;
            }
            let (locale, pack) = load_one(&sub, &entry.file_name())?;
            packs.insert(locale, pack);
        }
        if packs.is_empty() {
            return Err(PromptError::NoPacks {
                dir: dir.to_path_buf(),
            });
        }
        Ok(PromptLibrary { packs })
    }

    /// The `en` and `nl` packs embedded in the binary, so `otpdial demo` works from any
    /// directory. A unit test proves both load; should one ever not, it is logged and
    /// left out rather than taking the process down.
    pub fn builtin() -> PromptLibrary {
        let mut packs = BTreeMap::new();
        for (locale, result) in Self::parse_embedded() {
            match result {
                Ok(pack) => {
                    packs.insert(locale.to_owned(), Arc::new(pack));
                }
                Err(e) => tracing::error!(error = %e, "built-in prompt pack is broken"),
            }
        }
        PromptLibrary { packs }
    }

    /// The built-in packs, failing on the first broken one (for `prompts check`).
    pub fn builtin_checked() -> Result<PromptLibrary, PromptError> {
        let mut packs = BTreeMap::new();
        for (locale, result) in Self::parse_embedded() {
            packs.insert(locale.to_owned(), Arc::new(result?));
        }
        Ok(PromptLibrary { packs })
    }

    fn parse_embedded() -> Vec<(&'static str, Result<PromptPack, PromptError>)> {
        let mut out = Vec::new();
        for (locale, toml_text, files) in EMBEDDED {
            let origin = PathBuf::from(format!("<builtin>/prompts/{locale}"));
            let read = |name: &str| {
                files
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, bytes)| bytes.to_vec())
                    .ok_or_else(|| PromptError::Io {
                        path: origin.join(name),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "not embedded in the binary",
                        ),
                    })
            };
            out.push((locale, PromptPack::parse(locale, &origin, toml_text, &read)));
        }
        out
    }

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
            let call = super::CallScript::build(pack, &SAMPLE_CODE, 2);
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

    /// The pack of a locale.
    pub fn get(&self, locale: &str) -> Option<Arc<PromptPack>> {
        self.packs.get(locale).cloned()
    }

    /// Installed locales, sorted.
    pub fn locales(&self) -> Vec<String> {
        self.packs.keys().cloned().collect()
    }

    /// All packs, sorted by locale.
    pub fn packs(&self) -> impl Iterator<Item = &Arc<PromptPack>> {
        self.packs.values()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn builtin_loads_en_and_nl() {
        let lib = PromptLibrary::builtin();
        assert_eq!(lib.locales(), vec!["en".to_owned(), "nl".to_owned()]);
        let en = lib.get("en").unwrap();
        assert_eq!(en.locale(), "en");
        assert_eq!(en.language(), "English");
        assert_eq!(lib.get("nl").unwrap().language(), "Nederlands");
        assert_eq!(en.digit_pause(), Duration::from_millis(350));
        assert_eq!(en.group_pause(), Duration::from_millis(800));
        for p in Phrase::ALL {
            assert!(en.pcm(p).len() > 800, "{p:?} too short");
        }
        assert!(en.pcm(Phrase::Digit(10)).is_empty());
        let intro = en.duration(Phrase::Intro);
        assert!(intro > Duration::from_millis(500) && intro < Duration::from_secs(5));
        assert!(en.frames(Phrase::Digit(10), G711::Ulaw).is_empty());
    }

    #[test]
    fn load_dir_reads_the_shipped_packs() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let lib = PromptLibrary::load_dir(&dir).unwrap();
        assert_eq!(lib.locales(), vec!["en".to_owned(), "nl".to_owned()]);
        let builtin = PromptLibrary::builtin();
        assert_eq!(
            lib.get("nl").unwrap().pcm(Phrase::Intro),
            builtin.get("nl").unwrap().pcm(Phrase::Intro)
        );
    }

    #[test]
    fn frames_are_160_bytes_with_silence_padding() {
        let lib = PromptLibrary::builtin();
        let pack = lib.get("en").unwrap();
        for codec in [G711::Ulaw, G711::Alaw] {
            for p in Phrase::ALL {
                let pcm = pack.pcm(p);
                let frames = pack.frames(p, codec);
                assert_eq!(frames.len(), pcm.len().div_ceil(FRAME_SAMPLES));
                let flat: Vec<u8> = frames.iter().flatten().copied().collect();
                assert_eq!(&flat[..pcm.len()], g711::encode(codec, pcm).as_slice());
                assert!(flat[pcm.len()..].iter().all(|&b| b == codec.silence()));
            }
        }
    }

    // --- error cases: each message names the file -------------------------------

    fn write_wav(path: &Path, channels: u16, bits: u16, rate: u32, n: usize) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for i in 0..n * usize::from(channels) {
            let v = ((i as f64 * 0.3).sin() * 60.0) as i32;
            if bits == 8 {
                w.write_sample(v as i8).unwrap();
            } else {
                w.write_sample((v * 100) as i16).unwrap();
            }
        }
        w.finalize().unwrap();
    }

    /// A complete valid pack in `<tmp>/xx`.
    fn make_pack() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("xx");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("pack.toml"), "language = \"Test\"\n").unwrap();
        for name in FilesToml::default().digits.iter().chain(
            ["intro.wav", "repeat.wav", "outro.wav", "press-key.wav"]
                .map(String::from)
                .iter(),
        ) {
            write_wav(&dir.join(name), 1, 16, 8000, 1000);
        }
        (tmp, dir)
    }

    fn load_err(tmp: &tempfile::TempDir) -> String {
        PromptLibrary::load_dir(tmp.path()).unwrap_err().to_string()
    }

    #[test]
    fn minimal_pack_loads_with_defaults() {
        let (tmp, _) = make_pack();
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let pack = lib.get("xx").unwrap();
        assert_eq!(pack.language(), "Test");
        assert_eq!(pack.digit_pause(), Duration::from_millis(400));
        assert_eq!(pack.pcm(Phrase::Digit(7)).len(), 1000);
        assert_eq!(pack.frames(Phrase::Digit(7), G711::Alaw).len(), 7);
    }

    #[test]
    fn missing_file_is_named() {
        let (tmp, dir) = make_pack();
        std::fs::remove_file(dir.join("7.wav")).unwrap();
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/7.wav") && msg.contains("cannot read"),
            "{msg}"
        );
    }

    #[test]
    fn stereo_wav_is_rejected_by_name() {
        let (tmp, dir) = make_pack();
        write_wav(&dir.join("intro.wav"), 2, 16, 8000, 1000);
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/intro.wav") && msg.contains("mono"),
            "{msg}"
        );
    }

    #[test]
    fn eight_bit_wav_is_rejected_by_name() {
        let (tmp, dir) = make_pack();
        write_wav(&dir.join("3.wav"), 1, 8, 8000, 1000);
        let msg = load_err(&tmp);
        assert!(msg.contains("xx/3.wav") && msg.contains("8-bit"), "{msg}");
    }

    #[test]
    fn other_rates_are_resampled_to_8k() {
        let (tmp, dir) = make_pack();
        // 0.5 s of a 440 Hz tone at 44.1 kHz.
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(dir.join("outro.wav"), spec).unwrap();
        for i in 0..22_050 {
            let v = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 44_100.0).sin();
            w.write_sample((v * 10_000.0) as i16).unwrap();
        }
        w.finalize().unwrap();
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let pcm = lib.get("xx").unwrap().pcm(Phrase::Outro).to_vec();
        assert!((3990..=4010).contains(&pcm.len()), "{}", pcm.len());
        // Same tone at 8 kHz, normalised from 10000 to the -3 dBFS peak. (Trimming may
        // shift the start by the resampler's ramp-in, so compare level and frequency,
        // not samples.)
        let mid = &pcm[1000..3000];
        let peak = mid.iter().map(|s| i32::from(*s).abs()).max().unwrap();
        assert!((22_500..=23_300).contains(&peak), "peak {peak}");
        let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        // 440 Hz over 0.25 s: 220 zero crossings.
        assert!(
            (218..=222).contains(&crossings),
            "{crossings} zero crossings"
        );
    }

    /// Writes a G.711 WAV by hand (format tag 6 = A-law, 7 = µ-law).
    fn write_g711_wav(path: &Path, tag: u16, channels: u16, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(4 + 26 + 8 + data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&18u32.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&(8000 * u32::from(channels)).to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&8u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn g711_wavs_are_read() {
        let (tmp, dir) = make_pack();
        // Peak at -3 dBFS already: loaded without a gain, so bit-exact.
        let pcm: Vec<i16> = (0..800).map(|i| ((i % 50) * 900 - 22_500) as i16).collect();
        write_g711_wav(&dir.join("1.wav"), 7, 1, &g711::encode(G711::Ulaw, &pcm));
        write_g711_wav(&dir.join("2.wav"), 6, 1, &g711::encode(G711::Alaw, &pcm));
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let pack = lib.get("xx").unwrap();
        let u = pack.pcm(Phrase::Digit(1));
        assert_eq!(u, g711::decode(G711::Ulaw, &g711::encode(G711::Ulaw, &pcm)));
        // Re-encoding in the same law gives back the file's bytes exactly.
        assert_eq!(
            pack.frames(Phrase::Digit(1), G711::Ulaw)[0][..],
            g711::encode(G711::Ulaw, &pcm)[..160]
        );
        assert_eq!(pack.pcm(Phrase::Digit(2)).len(), 800);

        write_g711_wav(&dir.join("2.wav"), 6, 2, &g711::encode(G711::Alaw, &pcm));
        let msg = load_err(&tmp);
        assert!(msg.contains("xx/2.wav") && msg.contains("mono"), "{msg}");
    }

    #[test]
    fn not_a_wav_is_rejected_by_name() {
        let (tmp, dir) = make_pack();
        std::fs::write(dir.join("repeat.wav"), b"hello").unwrap();
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/repeat.wav") && msg.contains("WAV"),
            "{msg}"
        );
    }

    #[test]
    fn bad_pack_toml_is_named() {
        for (text, needle) in [
            ("language = ", "pack.toml"),
            ("langauge = \"x\"", "langauge"),
            ("language = \"x\"\ndigit_pause = \"soon\"", "digit_pause"),
            (
                "language = \"x\"\n[files]\ndigits = [\"0.wav\"]",
                "files.digits",
            ),
            (
                "language = \"x\"\n[files]\nintro = \"../../etc/passwd\"",
                "plain file name",
            ),
        ] {
            let (tmp, dir) = make_pack();
            std::fs::write(dir.join("pack.toml"), text).unwrap();
            let msg = load_err(&tmp);
            assert!(
                msg.contains("xx/pack.toml") && msg.contains(needle),
                "{text}: {msg}"
            );
        }
    }

    fn write_pcm(path: &Path, pcm: &[i16]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for &s in pcm {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
    }

    #[test]
    fn silence_is_trimmed_and_level_normalised() {
        let (tmp, dir) = make_pack();
        // 0.5 s of hiss, 0.2 s of a quiet tone (-24 dBFS), 0.3 s of hiss.
        let hiss = |i: usize| ((i * 7919) % 41) as i16 - 20;
        let mut pcm: Vec<i16> = (0..4000).map(hiss).collect();
        pcm.extend((0..1600).map(|i| ((i as f32 * 0.5).sin() * 2000.0) as i16));
        pcm.extend((0..2400).map(hiss));
        write_pcm(&dir.join("5.wav"), &pcm);
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let got = lib.get("xx").unwrap().pcm(Phrase::Digit(5)).to_vec();
        // The tone and 20 ms either side (plus up to a 10 ms window of rounding).
        assert!(
            (1600 + 2 * 160..=1600 + 2 * 160 + 2 * 80).contains(&got.len()),
            "{}",
            got.len()
        );
        let peak = got.iter().map(|s| i32::from(*s).abs()).max().unwrap();
        assert!((23_000..=23_400).contains(&peak), "peak {peak}");
    }

    #[test]
    fn a_silent_file_is_rejected_by_name() {
        let (tmp, dir) = make_pack();
        write_pcm(&dir.join("intro.wav"), &[3; 4000]);
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/intro.wav") && msg.contains("silent"),
            "{msg}"
        );
    }

    #[test]
    fn builtin_packs_pass_the_check_and_report_every_phrase() {
        let lib = PromptLibrary::builtin_checked().unwrap();
        let report = lib.report();
        assert!(report.contains("en (English)"), "{report}");
        assert!(report.contains("nl (Nederlands)"), "{report}");
        assert_eq!(report.matches(" press-key ").count(), 2, "{report}");
        // "digit 9" and "digit 9 final", in both packs.
        assert_eq!(report.matches(" digit 9 ").count(), 4, "{report}");
        assert_eq!(report.matches(" digit 9 final ").count(), 2, "{report}");
        assert_eq!(
            report
                .matches("final forms of the digits: 10 of 10")
                .count(),
            2
        );
        // The shipped packs are what `prompts check` asks of a pack.
        assert_eq!(lib.problems(), Vec::<String>::new(), "{report}");
        assert_eq!(report.matches("0 problems found").count(), 2, "{report}");
    }

    #[test]
    fn problems_name_the_file_to_fix() {
        let (tmp, dir) = make_pack();
        // A tone from the first sample to the last: a cut recording.
        let tone: Vec<i16> = (0..4000)
            .map(|n| {
                (8000.0 * (f64::from(n) * 440.0 / 8000.0 * std::f64::consts::TAU).sin()) as i16
            })
            .collect();
        write_pcm(&dir.join("7.wav"), &tone);
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let problems = lib.problems();
        let want = format!("{}: digit 7: clipped onset", dir.join("7.wav").display());
        assert!(
            problems.iter().any(|p| p.starts_with(&want)),
            "{problems:?}"
        );
        // make_pack's short test tones have problems of their own, each under its file.
        let intro = format!("{}: intro: short", dir.join("intro.wav").display());
        assert!(
            problems.iter().any(|p| p.starts_with(&intro)),
            "{problems:?}"
        );
    }

    #[test]
    fn a_single_pack_folder_loads_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/nl");
        let lib = PromptLibrary::load_dir(&dir).unwrap();
        assert_eq!(lib.locales(), vec!["nl".to_owned()]);
        // `prompts/nl/.` names the same folder.
        let lib = PromptLibrary::load_dir(&dir.join(".")).unwrap();
        assert_eq!(lib.locales(), vec!["nl".to_owned()]);
    }

    #[test]
    fn final_forms_are_optional_and_fall_back_to_the_plain_digit() {
        let (tmp, dir) = make_pack();
        // 4-final.wav by convention; no other final form.
        write_wav(&dir.join("4-final.wav"), 1, 16, 8000, 1200);
        let lib = PromptLibrary::load_dir(tmp.path()).unwrap();
        let pack = lib.get("xx").unwrap();
        assert!(pack.has_final(4) && !pack.has_final(5));
        assert_eq!(pack.pcm(Phrase::FinalDigit(4)).len(), 1200);
        assert_eq!(
            pack.pcm(Phrase::FinalDigit(5)),
            pack.pcm(Phrase::Digit(5)),
            "missing final form plays the plain digit"
        );
        assert!(pack.pcm(Phrase::FinalDigit(10)).is_empty());
        assert!(lib.report().contains("final forms of the digits: 1 of 10"));

        // Named in pack.toml: then all ten must be there.
        let names: Vec<String> = (0..10).map(|d| format!("\"{d}-final.wav\"")).collect();
        std::fs::write(
            dir.join("pack.toml"),
            format!(
                "language = \"Test\"\n[files]\ndigits_final = [{}]\n",
                names.join(", ")
            ),
        )
        .unwrap();
        let msg = load_err(&tmp);
        assert!(
            msg.contains("xx/0-final.wav") && msg.contains("cannot read"),
            "{msg}"
        );
        std::fs::write(
            dir.join("pack.toml"),
            "language = \"Test\"\n[files]\ndigits_final = [\"4-final.wav\"]\n",
        )
        .unwrap();
        assert!(load_err(&tmp).contains("files.digits_final"));
    }

    #[test]
    fn the_check_finds_what_a_listener_would_suffer_from() {
        let tone = |n: usize, amp: f32| -> Vec<i16> {
            (0..n)
                // 1.27 kHz: mid-band.
                .map(|i| ((i as f32).sin() * amp) as i16)
                .collect()
        };
        let quiet = vec![0i16; 160];
        // A clean digit: 20 ms silence, 400 ms of sound, 20 ms silence.
        let mut clean = quiet.clone();
        clean.extend(tone(3200, 4_000.0));
        clean.extend(&quiet);
        let c = check_phrase(Phrase::Digit(5), &clean);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        // Starts and ends mid-sound.
        let cut = tone(3200, 4_000.0);
        let p = check_phrase(Phrase::Digit(5), &cut).problems.join("; ");
        assert!(
            p.contains("clipped onset") && p.contains("clipped tail"),
            "{p}"
        );
        // Half a second of silence inside a digit, and too long.
        let mut gap = clean.clone();
        gap.extend(vec![0i16; 4000]);
        gap.extend(&clean);
        let p = check_phrase(Phrase::FinalDigit(5), &gap)
            .problems
            .join("; ");
        assert!(p.contains("silence inside") && p.contains("long"), "{p}");
        // Too short.
        let mut short = quiet.clone();
        short.extend(tone(800, 4_000.0));
        short.extend(&quiet);
        assert!(check_phrase(Phrase::Digit(1), &short).problems[0].contains("short"));
        // A click sets the peak, the speech is far below it.
        let mut clicky = clean.clone();
        for s in &mut clicky {
            *s /= 10;
        }
        clicky[1000] = 23_000;
        let p = check_phrase(Phrase::Digit(5), &clicky).problems.join("; ");
        assert!(p.contains("quiet"), "{p}");
        // Flat tops.
        let mut clipped = quiet.clone();
        clipped.extend(
            tone(3200, 60_000.0)
                .iter()
                .map(|&s| s.clamp(-20_000, 20_000)),
        );
        clipped.extend(&quiet);
        let p = check_phrase(Phrase::Digit(5), &clipped).problems.join("; ");
        assert!(p.contains("clipping"), "{p}");
        // A hum: nearly all energy at 100 Hz.
        let mut hum = quiet.clone();
        hum.extend((0..3200).map(|i| {
            ((i as f32 * 2.0 * std::f32::consts::PI * 100.0 / 8000.0).sin() * 20_000.0) as i16
        }));
        hum.extend(&quiet);
        let p = check_phrase(Phrase::Digit(5), &hum).problems.join("; ");
        assert!(p.contains("muffled"), "{p}");
    }

    /// The fuzzer's inputs (`fuzz/regressions/wav_phrase/`): G.711 WAVs declaring
    /// 4,294,967,291 Hz (the resampler asked for 17 GB and aborted) and 1,230,118,720 Hz
    /// (it ran past the fuzzer's timeout); 1 Hz took seconds.
    #[test]
    fn absurd_sample_rates_are_refused_not_resampled() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/wav_phrase");
        for name in [
            "g711-rate-4294967291.wav",
            "g711-rate-1230118720-timeout.wav",
            "pcm-rate-1.wav",
        ] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let e = decode_wav(Path::new(name), &bytes).unwrap_err().to_string();
            assert!(e.contains("sample rate") && e.contains(name), "{e}");
        }
    }

    #[test]
    fn empty_dir_has_no_packs() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = load_err(&tmp);
        assert!(msg.contains("no prompt pack"), "{msg}");
    }
}
