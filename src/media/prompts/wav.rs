//! Reading a phrase's WAV file: 16-bit PCM through hound or G.711 read here,
//! resampled to 8 kHz (rubato), trimmed of leading and trailing silence and
//! brought to a -3 dBFS peak.

use std::path::Path;

use super::PromptError;
use crate::media::{g711, G711, SAMPLE_RATE};

/// What is wrong with a phrase's WAV file; [`PromptError::Wav`] names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavDefect {
    /// hound could not read the RIFF/WAVE structure.
    #[error("not a readable WAV file: {0}")]
    Unreadable(String),
    /// More than one channel.
    #[error("has {0} channels; prompts must be mono (sox in.wav -c 1 out.wav)")]
    NotMono(u16),
    /// Float or non-16-bit integer samples.
    #[error("has {bits}-bit {kind} samples; prompts must be 16-bit PCM or G.711 (sox in.wav -b 16 -e signed-integer out.wav)")]
    SampleFormat {
        /// Bits per sample.
        bits: u16,
        /// "integer" or "float".
        kind: &'static str,
    },
    /// A rate outside 4 kHz to 384 kHz (0 included).
    #[error("declares a sample rate of {0} Hz; prompts must be 4 kHz to 384 kHz")]
    Rate(u32),
    /// No samples at all.
    #[error("has no samples")]
    Empty,
    /// Longer than [`MAX_PHRASE_SECONDS`].
    #[error("is longer than {MAX_PHRASE_SECONDS} s; a prompt is one short phrase")]
    TooLong,
    /// The sample data ends early or is corrupt.
    #[error("corrupt sample data: {0}")]
    CorruptSamples(String),
    /// A G.711 file whose fmt chunk is cut short.
    #[error("G.711 WAV with a truncated fmt chunk")]
    G711TruncatedFmt,
    /// A G.711 file with more than one channel.
    #[error("has {0} channels; prompts must be mono")]
    G711NotMono(u16),
    /// A G.711 file that is not 8 bits per sample, or at 0 Hz.
    #[error("G.711 WAV with {bits} bits per sample at {rate} Hz; expected 8 bits")]
    G711Format {
        /// Bits per sample.
        bits: u16,
        /// Declared rate.
        rate: u32,
    },
    /// A G.711 file without a data chunk.
    #[error("G.711 WAV without a data chunk")]
    G711NoData,
    /// The resampler refused the input.
    #[error("cannot resample from {rate} Hz: {message}")]
    Resample {
        /// The file's rate.
        rate: u32,
        /// rubato's error.
        message: String,
    },
    /// Peak below -60 dBFS.
    #[error("is silent (peak below -60 dBFS)")]
    Silent,
}

/// Longest phrase accepted; keeps a wrong file (a whole song) from eating memory.
const MAX_PHRASE_SECONDS: u32 = 60;

/// Sample rates accepted, telephone band to studio. Outside it a header is broken, and
/// the resampler's buffers grow with the rate: 4 GHz asked for 17 GB (fuzzer), 1 Hz
/// took seconds.
const WAV_RATES: std::ops::RangeInclusive<u32> = 4_000..=384_000;

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

/// Decodes one phrase's WAV file, given as bytes, to 8 kHz mono i16, trimmed and
/// level-normalised: what a pack load does with each file it reads. `path` only names
/// the file in errors.
///
/// Accepts mono 16-bit integer PCM at any rate (resampled here, once, at load) and
/// mono G.711 µ-law/A-law WAV (format tags 7/6, which hound does not read).
pub fn decode_wav(path: &Path, bytes: &[u8]) -> Result<Vec<i16>, PromptError> {
    let wav_err = |defect: WavDefect| PromptError::Wav {
        path: path.to_path_buf(),
        defect,
    };
    let (pcm, rate) = match g711_wav(bytes) {
        Some(g) => {
            let g = g.map_err(wav_err)?;
            (g711::decode(g.codec, g.data), g.rate)
        }
        None => decode_pcm_wav(bytes).map_err(wav_err)?,
    };
    if !WAV_RATES.contains(&rate) {
        return Err(wav_err(WavDefect::Rate(rate)));
    }
    if pcm.is_empty() {
        return Err(wav_err(WavDefect::Empty));
    }
    if pcm.len() as u64 > u64::from(MAX_PHRASE_SECONDS) * u64::from(rate) {
        return Err(wav_err(WavDefect::TooLong));
    }
    let pcm = if rate == SAMPLE_RATE {
        pcm
    } else {
        resample(&pcm, rate).map_err(wav_err)?
    };
    condition(&pcm).map_err(wav_err)
}

/// Trims leading and trailing silence (the script inserts its own pauses, so silence
/// in a file would make those uneven) and brings the peak to -3 dBFS.
fn condition(pcm: &[i16]) -> Result<Vec<i16>, WavDefect> {
    let peak = pcm.iter().map(|&s| i32::from(s).abs()).max().unwrap_or(0);
    if peak < MIN_PEAK {
        return Err(WavDefect::Silent);
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
fn decode_pcm_wav(bytes: &[u8]) -> Result<(Vec<i16>, u32), WavDefect> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| WavDefect::Unreadable(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(WavDefect::NotMono(spec.channels));
    }
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        let kind = match spec.sample_format {
            hound::SampleFormat::Int => "integer",
            hound::SampleFormat::Float => "float",
        };
        return Err(WavDefect::SampleFormat {
            bits: spec.bits_per_sample,
            kind,
        });
    }
    if spec.sample_rate == 0 {
        return Err(WavDefect::Rate(0));
    }
    // Checked before reading the samples, so a huge file is refused cheaply.
    if u64::from(reader.duration()) > u64::from(MAX_PHRASE_SECONDS) * u64::from(spec.sample_rate) {
        return Err(WavDefect::TooLong);
    }
    let pcm = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|e| WavDefect::CorruptSamples(e.to_string()))?;
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
fn g711_wav(bytes: &[u8]) -> Option<Result<G711Wav<'_>, WavDefect>> {
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
                return Some(Err(WavDefect::G711TruncatedFmt));
            };
            format = Some((codec, channels, rate, bits));
        } else if id == b"data" {
            // data before fmt: not a file we understand; let hound report it.
            let (codec, channels, rate, bits) = format?;
            if channels != 1 {
                return Some(Err(WavDefect::G711NotMono(channels)));
            }
            if bits != 8 || rate == 0 {
                return Some(Err(WavDefect::G711Format { bits, rate }));
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
    format.map(|_| Err(WavDefect::G711NoData))
}

/// Converts a phrase to 8 kHz (FFT resampler, anti-aliased), once at load.
fn resample(pcm: &[i16], rate: u32) -> Result<Vec<i16>, WavDefect> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};

    let failed = |e: &dyn std::fmt::Display| WavDefect::Resample {
        rate,
        message: e.to_string(),
    };
    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut resampler = Fft::<f32>::new(
        rate as usize,
        SAMPLE_RATE as usize,
        1024,
        1,
        FixedSync::Both,
    )
    .map_err(|e| failed(&e))?;
    let adapter = InterleavedSlice::new(&input, 1, input.len()).map_err(|e| failed(&e))?;
    let out = resampler
        .process_all(&adapter, input.len(), None)
        .map_err(|e| failed(&e))?;
    Ok(out
        .take_data()
        .into_iter()
        // The cast saturates; clamp first only to make the intent explicit.
        .map(|v| (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16)
        .collect())
}
